"""Every architecture through every method and all three stages on a CUDA
device: save, `onecomp.load`, evaluation and a resume. Marked ``gpu`` (run with
``-m gpu`` where a CUDA device is present; DEVELOPERS.md says how); skipped
without one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

import onecomp
import onecomp.stages.layerwise as layerwise
from onecomp.config import build_job_config
from onecomp.methods import METHODS
from onecomp.pipeline import compress
from tests.conftest import TINY_ARCHS, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.real,  # borrows the SmolLM2 tokenizer
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BITS = {"gptq": 4, "rtn": 4, "dbf": 2.0, "mdbf": 2.0, "lords": 3}


def _model_dir(arch: str, root: Path) -> Path:
    from onecomp.models.resolve import resolve_model

    d = root / arch
    if not (d / "config.json").is_file():
        tok = transformers.AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path)
        model = tiny_model(arch, layers=2)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        model.config.dtype = torch.bfloat16
        model.to(torch.bfloat16).save_pretrained(d)
        tok.save_pretrained(d)
    return d


def _config(model: Path, out: Path, method: str, device: str = "cuda:0") -> dict:
    return {
        "model": str(model), "output": str(out), "device": device,
        "quant": {"method": method, "bits": BITS[method], **({"group_size": 32} if method in ("gptq", "rtn", "lords") else {})},
        "calib": {"nsamples": 4, "seqlen": 32},
        "stages": ["layerwise", "blockwise", "global"],
        "blockwise": {"epochs": 1}, "global": {"nsamples": 2},
        "eval": {"ppl": ["builtin"], "max_windows": 2, "seqlen": 32, "tasks": ["onecomp_wiki_title"], "limit": 4},
    }


def test_methods_cover_the_registry() -> None:
    assert set(BITS) == set(METHODS)


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("method", sorted(BITS))
def test_every_stage_on_the_gpu(arch: str, method: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path_factory.getbasetemp() / "gpu-models"
    model = _model_dir(arch, root)
    out = tmp_path_factory.mktemp(f"{arch}-{method}") / "out"
    monkeypatch.setenv("ONECOMP_CACHE", str(out.parent / "cache"))
    summary = compress(build_job_config(_config(model, out, method)))
    assert [r.name for r in summary.rows] == ["original", "1-layerwise", "2-blockwise", "3-global"]
    for row in summary.rows:
        assert all(v == v and v > 0 for v in row.metrics.values()), row  # finite, scored
    best = out / "pivots" / (summary.best or "1-layerwise")
    loaded = onecomp.load(best, device="cuda:0")
    ids = torch.randint(3, 100, (1, 16), device="cuda:0")
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
    assert logits.device.type == "cuda" and torch.isfinite(logits).all()


def test_a_killed_gpu_job_resumes_to_the_same_pivot(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model_dir("llama", tmp_path_factory.getbasetemp() / "gpu-models")
    base = tmp_path_factory.mktemp("resume")
    monkeypatch.setenv("ONECOMP_CACHE", str(base / "cache"))
    cfg = {**_config(model, base / "ref", "gptq"), "stages": ["layerwise"], "eval": {"ppl": [], "tasks": []}}
    compress(build_job_config(cfg))
    original = layerwise._quantize_block

    def crashing(block, index, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if index == 1:
            raise RuntimeError("simulated crash")
        return original(block, index, *args, **kwargs)

    monkeypatch.setattr(layerwise, "_quantize_block", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compress(build_job_config({**cfg, "output": str(base / "out")}))
    monkeypatch.setattr(layerwise, "_quantize_block", original)
    compress(build_job_config({**cfg, "output": str(base / "out")}), resume=True)
    from safetensors.torch import load_file

    a = load_file(str(base / "ref" / "pivots" / "1-layerwise" / "model.safetensors"))
    b = load_file(str(base / "out" / "pivots" / "1-layerwise" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
