"""Block-wise refinement lowers a block's output error and never makes it worse."""

from __future__ import annotations

import torch

from onecomp.models.adapters import adapter_for
from onecomp.refine.blockwise import BlockwiseSettings, capture_streams, refine_block, teacher_outputs
from tests.refine.conftest import teacher_and_student

CPU = torch.device("cpu")


def _setup(settings: BlockwiseSettings):
    teacher, student, ids = teacher_and_student()
    adapter = adapter_for("llama")
    q, fp = capture_streams(student, adapter.blocks(student), ids, settings.batch_size, CPU)
    targets = teacher_outputs(adapter.blocks(teacher)[0], fp, 0, CPU, torch.float32)
    return adapter.blocks(student)[0], q, targets


def test_refinement_lowers_the_block_loss_and_keeps_codes() -> None:
    settings = BlockwiseSettings(epochs=4, lr=1e-2, batch_size=2)
    block, q, targets = _setup(settings)
    codes = {k: v.clone() for k, v in block.state_dict().items() if k.endswith("qweight")}
    stats, outs = refine_block(block, q, 0, targets, settings, CPU, torch.float32, torch.bfloat16)
    assert stats.kept and stats.loss_after < 0.9 * stats.loss_before
    assert all(torch.equal(block.state_dict()[k], v) for k, v in codes.items())
    assert len(outs) == len(q.hidden) and outs[0].shape == q.hidden[0].shape
    norm = block.input_layernorm.weight
    assert torch.equal(norm, norm.to(torch.bfloat16).float())  # stored precision


def test_a_block_that_got_worse_keeps_its_start_values() -> None:
    settings = BlockwiseSettings(epochs=2, lr=50.0, batch_size=2)
    block, q, targets = _setup(settings)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    stats, _ = refine_block(block, q, 0, targets, settings, CPU, torch.float32, torch.bfloat16)
    assert not stats.kept and stats.loss_after == stats.loss_before
    after = block.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_same_seed_same_result() -> None:
    settings = BlockwiseSettings(epochs=2, lr=1e-2, batch_size=2)
    results = []
    for _ in range(2):
        block, q, targets = _setup(settings)
        refine_block(block, q, 0, targets, settings, CPU, torch.float32, torch.bfloat16)
        results.append({k: v.clone() for k, v in block.state_dict().items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])

