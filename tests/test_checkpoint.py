"""A pivot's config, formats and tensors are checked before anything is loaded:
each problem is one line naming the layer, never a raw exception; a full disk
while a pivot is written is the OSError every other write raises. Pivots are
written for the user who will share them: their umask, not 0600."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onecomp.checkpoint import check_checkpoint, load, save_pivot
from onecomp.errors import OneCompError
from onecomp.formats import IntFormat
from onecomp.inspect import profile_model
from onecomp.methods import get_method
from onecomp.models.adapters import adapter_for
from onecomp.stages.layerwise import run_layerwise
from tests.conftest import streamed, tiny_model

LAYER = "model.layers.0.self_attn.q_proj"


def make_pivot(path: Path, model: torch.nn.Module | None = None) -> Path:
    """A 4-bit RTN pivot of a tiny llama (or of ``model``) at ``path``."""
    model = model or tiny_model("llama")
    model.config.dtype = torch.float32
    adapter = adapter_for("llama")
    plan = {f"{adapter.block_prefix(i)}.{n}": IntFormat(bits=4, group_size=32) for i in range(2) for n in adapter.linear_names()}
    method = get_method("rtn")
    ids = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    result = run_layerwise(streamed(model), adapter, plan, method, method.options(), ids, 2)
    formats = {r.name: r.fmt for r in result.records}
    return save_pivot(path, model, result.packed, formats, path.parent, {"stage": "layerwise"})


@pytest.fixture
def pivot(tmp_path: Path) -> Path:
    return make_pivot(tmp_path / "pivot")


def _edit_qcfg(pivot: Path, edit) -> None:  # noqa: ANN001 - a function of the quantization_config
    cfg = json.loads((pivot / "config.json").read_text())
    edit(cfg["quantization_config"])
    (pivot / "config.json").write_text(json.dumps(cfg))


def _refused(pivot: Path, needle: str) -> None:
    for check in (check_checkpoint, load):
        with pytest.raises(OneCompError) as exc:
            check(pivot)
        assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_an_intact_pivot_passes(pivot: Path) -> None:
    check_checkpoint(pivot)
    assert type(load(pivot).get_submodule(LAYER)).__name__ == "IntQuantLinear"


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda q: q["layers"][LAYER].update(format="magic"), f"layer {LAYER}: unknown weight format 'magic'"),
        (lambda q: q["layers"][LAYER].update(bits=5), f"layer {LAYER}: bits: bits must be one of"),
        (lambda q: q["layers"].update({LAYER: 5}), f"layer {LAYER}: format 5 is not a mapping"),
        (lambda q: q["layers"].update({"model.layers.7.mlp.up_proj": q["layers"][LAYER]}), "layer model.layers.7.mlp.up_proj does not exist"),
        (lambda q: q["layers"].update({"model.norm": q["layers"][LAYER]}), "layer model.norm is not a linear layer"),
        (lambda q: q.pop("layers"), "has no 'layers' mapping"),
        (lambda q: q.update(quant_method="gptq"), "is not onecomp's"),
        (lambda q: q.update(format_version=99), "format_version 99"),
        (lambda q: q["layers"][LAYER].update(group_size=16), f"tensor {LAYER}.scales has shape [64, 2], {LAYER}'s declared format w4g16 needs [64, 4]"),
    ],
)
def test_a_bad_quantization_config_is_one_line(pivot: Path, edit, needle: str) -> None:
    _edit_qcfg(pivot, edit)
    _refused(pivot, needle)


def test_a_truncated_pivot_is_refused(pivot: Path) -> None:
    weights = pivot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _refused(pivot, "not an intact safetensors file")


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"model_type": "llama",', "is not valid JSON"),
        ("[1, 2]", "is not a JSON mapping"),
        ('{"hidden_size": 64}', "has no model_type"),
        ('{"model_type": "nosuchmodel"}', "model_type 'nosuchmodel' is unknown to the installed transformers"),
    ],
)
def test_a_bad_config_json_is_one_line(pivot: Path, text: str, needle: str) -> None:
    (pivot / "config.json").write_text(text)
    _refused(pivot, needle)
    with pytest.raises(OneCompError, match=needle.replace("(", r"\(")):
        profile_model(pivot)


def test_a_full_disk_while_writing_a_pivot_is_enospc(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*_a, **_k):  # what safetensors raises when the disk is full (seen on a 64 KiB tmpfs)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as exc:
        save_pivot(tmp_path / "p", tiny_model("llama"), {}, {}, tmp_path, {"stage": "layerwise"})
    assert exc.value.errno == errno.ENOSPC
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.*"))


def test_other_safetensors_errors_are_not_taken_for_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def broken(*_a, **_k):
        raise SafetensorError("something else")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(SafetensorError):
        save_pivot(tmp_path / "p", tiny_model("llama"), {}, {}, tmp_path, {"stage": "layerwise"})


@pytest.mark.parametrize("mask, files, dirs", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["umask022", "umask077"])
def test_pivot_files_follow_the_umask(tmp_path: Path, mask: int, files: int, dirs: int) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "tokenizer.json").write_text("{}")
    os.chmod(source / "tokenizer.json", 0o400)  # a copy gets the umask's mode, not its source's
    old = os.umask(mask)
    try:
        pivot = save_pivot(tmp_path / "out" / "pivots" / "1-layerwise", tiny_model("llama"), {}, {}, source, {"stage": "layerwise"})
    finally:
        os.umask(old)
    written = [tmp_path / "out", tmp_path / "out" / "pivots", pivot, *pivot.rglob("*")]
    assert {p.name for p in pivot.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json", "onecomp.json"}
    for path in written:
        assert path.stat().st_mode & 0o777 == (dirs if path.is_dir() else files), path


@pytest.mark.parametrize("shard_bytes", [10**9, 30_000])
def test_streamed_pivot_equals_the_in_memory_writer(tmp_path, shard_bytes: int) -> None:
    """The tensor-by-tensor writer (one file or shards with an index) gives the
    pivot save_pivot gives from the whole model; both load to the same logits."""
    from onecomp.checkpoint import write_streamed_pivot
    from onecomp.runtime.skeleton import StreamedModel
    from onecomp.runtime.writer import PendingTensor

    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    adapter = adapter_for("llama")
    plan = {f"{adapter.block_prefix(i)}.{n}": IntFormat(bits=4, group_size=32) for i in range(2) for n in adapter.linear_names()}
    method = get_method("rtn")
    source = StreamedModel.open(tmp_path / "m", torch.device("cpu"), torch.float32)
    result = run_layerwise(source, adapter, plan, method, method.options(), None, 2)
    formats = {r.name: r.fmt for r in result.records}
    save_pivot(tmp_path / "a", model, result.packed, formats, tmp_path / "m", {"stage": "layerwise"})
    pending = {layer: {k: PendingTensor(k, t.dtype, tuple(t.shape), lambda t=t: t) for k, t in ts.items()} for layer, ts in result.packed.items()}
    write_streamed_pivot(tmp_path / "b", source, pending, formats, tmp_path / "m", {"stage": "layerwise"}, torch.bfloat16, shard_bytes)
    assert (tmp_path / "b" / "model.safetensors.index.json").is_file() == (shard_bytes < 10**9)
    a = {k: v for f in sorted((tmp_path / "a").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    b = {k: v for f in sorted((tmp_path / "b").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(3, 128, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "b", dtype=torch.float32)(ids).logits, load(tmp_path / "a", dtype=torch.float32)(ids).logits)
