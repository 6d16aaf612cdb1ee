"""QEP inside the layer-wise stage: the two streams are paired token for token,
statistics are shared by the linears that read one input, and no more than one
block of the full-precision path is ever alive."""

import gc
import weakref

import pytest
import torch

import onecomp.stages.layerwise as layerwise
from onecomp.formats import IntFormat
from onecomp.methods import get_method
from onecomp.models.adapters import adapter_for
from onecomp.stages.layerwise import run_layerwise
from onecomp.stages.qep import QEPSettings
from tests.conftest import fake_quantize, streamed, tiny_model

IDS = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(5))


def _run(model, qep: QEPSettings | None, blocks=None, bits: int = 3, method: str = "gptq", progress=None):
    adapter = adapter_for("llama")
    n = len(adapter.blocks(model))
    plan = {
        f"{adapter.block_prefix(i)}.{name}": IntFormat(bits=bits, group_size=32)
        for i in (range(n) if blocks is None else blocks)
        for name in adapter.linear_names()
    }
    m = get_method(method)
    result = run_layerwise(streamed(model), adapter, plan, m, m.options(), IDS, 4, progress, qep=qep)
    fake_quantize(model, result.packed, {r.name: r.fmt for r in result.records})
    return result


def test_with_an_unquantized_prefix_the_first_group_is_plain_gptq() -> None:
    """Block 0 stays full precision, so both streams enter block 1 equal: its q/k/v
    see no upstream error and QEP leaves them as plain GPTQ makes them. Later groups
    of the block read outputs of quantized q/k/v, and QEP changes them."""
    plain = _run(tiny_model("llama", layers=2), None, blocks=[1])
    qep = _run(tiny_model("llama", layers=2), QEPSettings(alpha=0.5), blocks=[1])
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        full = f"model.layers.1.{name}"
        for key, t in plain.packed[full].items():
            assert torch.equal(qep.packed[full][key], t), (name, key)
    down = "model.layers.1.mlp.down_proj"
    assert not torch.equal(qep.packed[down]["qweight"], plain.packed[down]["qweight"])


def test_linears_that_read_one_input_share_statistics(monkeypatch) -> None:
    calls = []
    original = layerwise.collect_paired_statistics

    def counting(block, module, *args, **kwargs):
        calls.append(module)
        return original(block, module, *args, **kwargs)

    monkeypatch.setattr(layerwise, "collect_paired_statistics", counting)
    result = _run(tiny_model("llama", layers=2), QEPSettings())
    assert len(calls) == 2 * len(adapter_for("llama").groups)
    assert len(result.records) == 2 * len(adapter_for("llama").linear_names())


def test_one_full_precision_block_at_a_time(monkeypatch) -> None:
    from onecomp.runtime.skeleton import StreamedModel

    copies: list[weakref.ref] = []
    original = StreamedModel.load_copy

    def tracking(self, *args):
        out = original(self, *args)
        copies.append(weakref.ref(out))
        return out

    monkeypatch.setattr(StreamedModel, "load_copy", tracking)
    alive = []

    def progress(block, name, err):
        gc.collect()
        alive.append(sum(r() is not None for r in copies))

    _run(tiny_model("llama", layers=3), QEPSettings(), progress=progress)
    assert len(copies) == 3 and max(alive) == 1


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_qep_brings_the_model_closer_to_the_original(method: str) -> None:
    ref_model = tiny_model("llama", hidden=128, layers=3)
    with torch.no_grad():
        ref = ref_model(IDS).logits
    errors = {}
    for name, qep in (("plain", None), ("qep", QEPSettings(alpha=0.5))):
        model = tiny_model("llama", hidden=128, layers=3)
        result = _run(model, qep, bits=3, method=method)
        with torch.no_grad():
            errors[name] = float(((model(IDS).logits - ref) ** 2).mean())
        if qep is not None:
            assert all(r.info["qep_alpha"] == 0.5 for r in result.records)
    assert errors["qep"] < errors["plain"]


def test_disabled_qep_is_plain_quantization() -> None:
    plain = _run(tiny_model("llama", layers=2), None)
    off = _run(tiny_model("llama", layers=2), QEPSettings(enabled=False))
    for name, tensors in plain.packed.items():
        for key, t in tensors.items():
            assert torch.equal(off.packed[name][key], t)


def test_residual_term_reads_the_stream_each_writer_adds_to() -> None:
    """Block 0 unquantized: the stream entering block 1 has no drift, so o_proj (which
    adds to the block's input) is as without the residual term; down_proj adds to the
    stream after attention, which carries o_proj's and q/k/v's error, so it changes."""
    base = _run(tiny_model("llama", layers=2), QEPSettings(), blocks=[1])
    resid = _run(tiny_model("llama", layers=2), QEPSettings(residual=True), blocks=[1])
    o, down = "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"
    assert torch.equal(resid.packed[o]["qweight"], base.packed[o]["qweight"])
    assert not torch.equal(resid.packed[down]["qweight"], base.packed[down]["qweight"])


def test_post_norm_architectures_have_no_residual_writers() -> None:
    assert adapter_for("gemma3_text").residual_writers == {}
    assert set(adapter_for("llama").residual_writers) == {"self_attn.o_proj", "mlp.down_proj"}


@pytest.mark.parametrize("qep", [None, QEPSettings()])
def test_statistics_collected_upfront_when_not_true_sequential(qep) -> None:
    model = tiny_model("llama", layers=2)
    adapter = adapter_for("llama")
    plan = {f"{adapter.block_prefix(i)}.{n}": IntFormat(bits=3, group_size=32) for i in range(2) for n in adapter.linear_names()}
    m = get_method("gptq")
    seq = run_layerwise(streamed(model), adapter, plan, m, m.options(), IDS, 4, qep=qep)
    par = run_layerwise(streamed(tiny_model("llama", layers=2)), adapter, plan, m, m.options(), IDS, 4, qep=qep, true_sequential=False)
    first = "model.layers.0.self_attn.q_proj"  # the first group sees the same inputs either way
    assert torch.equal(seq.packed[first]["qweight"], par.packed[first]["qweight"])
    down = "model.layers.0.mlp.down_proj"
    assert not torch.equal(seq.packed[down]["qweight"], par.packed[down]["qweight"])


@pytest.mark.parametrize("residual", [False, True])
def test_cached_full_precision_inputs_give_the_same_result(residual: bool) -> None:
    """One forward of the original block per block (cache) or one per group (no cache)."""
    cached = _run(tiny_model("llama", layers=3), QEPSettings(residual=residual))
    recomputed = _run(tiny_model("llama", layers=3), QEPSettings(residual=residual, cache_gb=0.0))
    for name, tensors in cached.packed.items():
        for key, t in tensors.items():
            assert torch.equal(recomputed.packed[name][key], t), (name, key)


def indefinite_statistics(monkeypatch, block: int = 0, group: str = "self_attn.q_proj") -> None:
    """Make the Hessian of one group (the linears that read one input) indefinite:
    one diagonal entry of -5 x mean(diag H), which no damping below about 5 fixes."""
    original = layerwise.collect_paired_statistics

    def bad(blk, name, fp_block, inputs, fp_inputs, index, *args):
        stats = original(blk, name, fp_block, inputs, fp_inputs, index, *args)
        if index == block and name == group:
            stats.hessian = stats.hessian.clone()
            stats.hessian[0, 0] = -5.0 * float(stats.hessian.diagonal().mean())
        return stats

    monkeypatch.setattr(layerwise, "collect_paired_statistics", bad)


def test_a_raised_damping_is_recorded_with_a_warning_per_layer(monkeypatch) -> None:
    indefinite_statistics(monkeypatch)
    result = _run(tiny_model("llama", layers=2), QEPSettings(alpha=0.5, damp=0.01))
    records = {r.name: r for r in result.records}
    for name in ("q_proj", "k_proj", "v_proj"):
        rec = records[f"model.layers.0.self_attn.{name}"]
        assert rec.info["qep_damp"] == pytest.approx(10.0) and rec.info["damp"] == pytest.approx(10.0)
        assert len(rec.warnings) == 2
        assert any(w.startswith("QEP: ") and "damping 0.01" in w and "took 10 x mean(diag H)" in w for w in rec.warnings)
        assert any(w.startswith("gptq: ") and "damping 0.1" in w for w in rec.warnings)
    others = [r for r in result.records if ".layers.0.self_attn.o_proj" in r.name or ".layers.1." in r.name]
    assert others and all(not r.warnings for r in others)
    assert all(r.info["qep_damp"] == 0.01 and r.info["damp"] == 0.1 for r in others)  # what each used, recorded always
