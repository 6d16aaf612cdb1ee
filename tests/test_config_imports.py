"""Validating a job's settings (a job YAML, a batch file) needs neither torch nor
the algorithms: the schemas import without them, so a settings mistake is
reported in a second, and tools can check files on machines without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import sys
from pathlib import Path
from onecomp.config import build_job_config, load_job_yaml
from onecomp.batch.expand import load_batch
job = build_job_config(load_job_yaml(Path(sys.argv[1])))
assert job.quant.format().label() == "mdbf2e1p4", job.quant.format().label()
jobs = load_batch(Path(sys.argv[2]))
assert len(jobs.jobs) == 2
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "onecomp.algorithms", "transformers")))
print(heavy)
"""


def test_validating_yaml_imports_neither_torch_nor_the_algorithms(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("model: m\noutput: o\nquant:\n  method: mdbf\n  bits: 2.0\nstages: [layerwise, blockwise]\nblockwise:\n  epochs: 1\n")
    batch = tmp_path / "batch.yaml"
    batch.write_text("output: out\nmatrix:\n  models: [m]\n  methods: [rtn, gptq]\n  budgets: [4]\n")
    proc = subprocess.run([sys.executable, "-c", CHECK, str(job), str(batch)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout
