"""The quality gate of the default test run: on the real SmolLM2-135M, whole,
the defaults must still pay for themselves.

Three layer-wise jobs at the default format (w4 g128), each run once for the
module (when a test first needs it) through the engine itself
(``onecomp.pipeline.compress``), at the light settings of the batch examples
(docs/batch.md): 32 calibration sequences of 512 tokens instead of 128, and
perplexity on the first 16 held-out windows instead of 64. RTN, plain GPTQ
(``qep.enabled: false``) and the default, GPTQ with QEP. The gate fails when
GPTQ+QEP stops beating GPTQ, GPTQ stops beating RTN, the default pivot's PPL
ratio (pivot / original) leaves its measured bound, or a job's measured peak
memory exceeds its own estimate.
"""

import json
from pathlib import Path

import pytest

from onecomp.config import build_job_config
from onecomp.hardware import reset_peak_rss
from onecomp.pipeline import compress

pytestmark = pytest.mark.real

KEY = "ppl_builtin"
JOBS = {
    "rtn": {"method": "rtn", "qep": {"enabled": False}},
    "gptq": {"method": "gptq", "qep": {"enabled": False}},
    "gptq+qep": {"method": "gptq"},  # the default
}
# The smallest gains that count as paying for itself, as fractions of the
# worse job's PPL. Measured at full calibration on 64 windows (docs/benchmarks.md,
# w4 g128): GPTQ 12.8% below RTN (17.861 vs 20.486), GPTQ+QEP 8.5% below GPTQ
# (16.333 vs 17.861). A broken step gives no gain at all: with QEP's correction
# made a no-op, the GPTQ+QEP pivot is bit-identical to plain GPTQ's.
GPTQ_GAIN = 0.05
QEP_GAIN = 0.02
# The default pivot at these settings measured 1.111x (16.77 vs 15.09 on 16
# windows; docs/batch.md, "The methods example", 2026-12-01, GPTQ damping 0.01,
# since raised to 0.1, which lowered the full-calibration ratio from 1.090x to
# 1.077x). The margin, 0.04, covers the run-to-run spread of the thread count's
# reduction order (about 1%: 16.333 vs 16.503 in docs/benchmarks.md) and stays
# below plain GPTQ's full-calibration 1.177x.
MEASURED_RATIO = 1.111
MARGIN = 0.04
RATIO_BOUND = MEASURED_RATIO + MARGIN


def _job(out: Path, quant: dict) -> dict:
    config = build_job_config(
        {
            "model": "smollm2-135m",
            "output": str(out),
            "quant": {"bits": 4, "group_size": 128, **quant},
            "calib": {"nsamples": 32, "seqlen": 512},
            "eval": {"ppl": ["builtin"], "max_windows": 16, "tasks": []},
        }
    )
    compress(config)
    return json.loads((out / "eval" / "results.json").read_text())


class _Jobs:
    """Each job runs once, when a test first asks for it: a selection of the
    gate's tests (-k) runs only the jobs it needs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[str, dict] = {}

    def __getitem__(self, name: str) -> dict:
        if name not in self.done:
            self.done[name] = _job(self.root / name, JOBS[name])
        return self.done[name]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> _Jobs:
    return _Jobs(tmp_path_factory.mktemp("gate"))


def _ppl(results: _Jobs, name: str) -> float:
    return results[name]["pivots"]["1-layerwise"]["metrics"][KEY]


def test_gptq_beats_rtn(results: _Jobs) -> None:
    gptq, rtn = _ppl(results, "gptq"), _ppl(results, "rtn")
    assert gptq < (1 - GPTQ_GAIN) * rtn, f"GPTQ {gptq:.3f}, RTN {rtn:.3f}"


def test_qep_beats_plain_gptq(results: _Jobs) -> None:
    qep, gptq = _ppl(results, "gptq+qep"), _ppl(results, "gptq")
    assert qep < (1 - QEP_GAIN) * gptq, f"GPTQ+QEP {qep:.3f}, GPTQ {gptq:.3f}"


def test_default_pivot_ratio_within_its_measured_bound(results: _Jobs) -> None:
    ratio = results["gptq+qep"]["pivots"]["1-layerwise"]["ratios"][KEY]
    assert 1.0 < ratio <= RATIO_BOUND, f"PPL ratio {ratio:.4f}, bound {RATIO_BOUND} (measured {MEASURED_RATIO})"


@pytest.mark.parametrize("name", list(JOBS))
def test_peak_memory_within_the_estimate(results: _Jobs, name: str) -> None:
    if not reset_peak_rss():
        pytest.skip("this system cannot reset a process's peak memory, so a job's own peak is not measured")
    res = results[name]
    peak, estimate = res["peak_rss_bytes"], res["estimate_host_peak_bytes"]
    assert peak <= estimate, f"{name}: measured peak {peak / 2**30:.3f} GiB above the estimate {estimate / 2**30:.3f} GiB"
