"""A layer-wise run interrupted after some blocks resumes from the store and
produces exactly the result of an uninterrupted run, without redoing blocks."""

import pytest
import torch

from onecomp.formats import IntFormat
from onecomp.methods import get_method
from onecomp.models.adapters import adapter_for
from onecomp.stages.block_store import BlockStore
from onecomp.stages.layerwise import run_layerwise
from tests.conftest import streamed, tiny_model


class Killed(Exception):
    pass


def _run(store=None, kill_at_block=None, compute_dtype=torch.float32):
    model = tiny_model("llama", layers=4)
    adapter = adapter_for("llama")
    plan = {f"{adapter.block_prefix(i)}.{n}": IntFormat(bits=3, group_size=32) for i in range(4) for n in adapter.linear_names()}
    method = get_method("gptq")
    ids = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(3))
    seen = []

    def progress(block, name, err):
        seen.append(block)
        if kill_at_block is not None and block == kill_at_block:
            raise Killed

    result = run_layerwise(streamed(model, compute_dtype), adapter, plan, method, method.options(), ids, 4, progress, store)
    if store is not None:  # a stored block's packed tensors stay in its file
        assert not result.packed
        result.packed = {layer: {k: t.produce() for k, t in ts.items()} for i in range(store.finished()) for layer, ts in store.pending(i).items()}
    return result, seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_is_bit_identical(tmp_path, dtype) -> None:
    reference, _ = _run(compute_dtype=dtype)
    store = BlockStore(tmp_path / "blocks")
    with pytest.raises(Killed):
        _run(store, kill_at_block=2, compute_dtype=dtype)
    assert store.finished() == 2
    resumed, seen = _run(store, compute_dtype=dtype)
    assert min(seen) == 2  # finished blocks were not quantized again
    assert set(resumed.packed) == set(reference.packed)
    for name, tensors in reference.packed.items():
        for key, t in tensors.items():
            assert torch.equal(resumed.packed[name][key], t), (name, key)
    assert [r.name for r in resumed.records] == [r.name for r in reference.records]


def test_partial_file_is_not_a_finished_block(tmp_path) -> None:
    store = BlockStore(tmp_path)
    (tmp_path / ".block-0000.safetensors.x1y2.tmp").write_bytes(b"partial")
    assert store.finished() == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "metadata"])
def test_a_damaged_block_is_redone_from_the_last_good_one(tmp_path, damage) -> None:
    reference, _ = _run()
    store = BlockStore(tmp_path / "blocks")
    with pytest.raises(Killed):
        _run(store, kill_at_block=3)
    block1 = tmp_path / "blocks" / "block-0001.safetensors"
    if damage == "truncate":
        block1.write_bytes(block1.read_bytes()[:-64])
    elif damage == "garbage":
        block1.write_bytes(b"\x00" * 100)
    else:
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(block1), metadata={"formats": "{not json"})
    resumed_store = BlockStore(tmp_path / "blocks")
    resumed, seen = _run(resumed_store)
    assert min(seen) == 1  # block 0 was kept, block 1 and the ones after it redone
    assert len(resumed_store.dropped) == 1 and "block-0001.safetensors" in resumed_store.dropped[0]
    assert "and the 1 after it" in resumed_store.dropped[0]
    for name, tensors in reference.packed.items():
        for key, t in tensors.items():
            assert torch.equal(resumed.packed[name][key], t), (name, key)
