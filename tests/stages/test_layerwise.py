import pytest
import torch

from onecomp.checkpoint import load, save_pivot
from onecomp.formats import IntFormat, IntQuantLinear
from onecomp.methods import get_method
from onecomp.models.adapters import adapter_for
from onecomp.stages.layerwise import run_layerwise
from tests.conftest import TINY_ARCHS, fake_quantize, streamed, tiny_model


def _compress(model, method: str = "gptq", bits: int = 4, group: int = 32):
    adapter = adapter_for(model.config.model_type)
    adapter.check(model)
    n = len(adapter.blocks(model))
    plan = {f"{adapter.block_prefix(i)}.{name}": IntFormat(bits=bits, group_size=group) for i in range(n) for name in adapter.linear_names()}
    m = get_method(method)
    ids = torch.randint(3, model.config.vocab_size, (8, 32), generator=torch.Generator().manual_seed(1))
    result = run_layerwise(streamed(model), adapter, plan, m, m.options(), ids, 4)
    fake_quantize(model, result.packed, {r.name: r.fmt for r in result.records})
    return result, plan, ids


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_compress_save_load_each_architecture(arch: str, tmp_path) -> None:
    model = tiny_model(arch)
    model.config.dtype = torch.float32
    result, plan, ids = _compress(model)
    assert {r.name for r in result.records} == set(plan)
    with torch.no_grad():
        fake_quant = model(ids).logits
    formats = {r.name: r.fmt for r in result.records}
    save_pivot(tmp_path / "pivot", model, result.packed, formats, tmp_path, {"stage": "layerwise"})
    loaded = load(tmp_path / "pivot", dtype=torch.float32)
    assert isinstance(loaded.get_submodule(result.records[0].name), IntQuantLinear)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, fake_quant, rtol=1e-5, atol=1e-5)


def test_gptq_beats_rtn_on_calibration_logits() -> None:
    ref_model = tiny_model("llama", hidden=128, layers=3)
    ids = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_model(ids).logits
    errs = {}
    for method in ("rtn", "gptq"):
        model = tiny_model("llama", hidden=128, layers=3)
        _compress(model, method, bits=3, group=32)
        with torch.no_grad():
            errs[method] = float(((model(ids).logits - ref) ** 2).mean())
    assert errs["gptq"] < errs["rtn"]


def test_unknown_architecture_is_a_clear_error() -> None:
    from onecomp.errors import OneCompError

    with pytest.raises(OneCompError, match="not supported yet; supported: .*llama"):
        adapter_for("gpt2")


def test_a_reloaded_pivot_saves_its_tied_head_once(tmp_path) -> None:
    """Loading casts float tensors; the tied head must stay one tensor, so a pivot
    written from a loaded pivot (as refinement stages do) is not larger."""
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.config.dtype = torch.bfloat16
    result, _plan, _ids = _compress(model)
    formats = {r.name: r.fmt for r in result.records}
    save_pivot(tmp_path / "a", model, result.packed, formats, tmp_path, {"stage": "layerwise"})
    loaded = load(tmp_path / "a", dtype=torch.float32)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    save_pivot(tmp_path / "b", loaded, None, None, tmp_path, {"stage": "again"}, dtype=torch.bfloat16)
    a = (tmp_path / "a" / "model.safetensors").stat().st_size
    b = (tmp_path / "b" / "model.safetensors").stat().st_size
    assert abs(a - b) < 1024
    from safetensors.torch import load_file

    ta, tb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
