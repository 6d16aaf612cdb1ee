"""Global distillation lowers the distance to the teacher, and a run resumed
from its durable progress ends exactly where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onecomp.models.adapters import adapter_for
from onecomp.refine.global_kd import TEACHER_FILE, GlobalSettings, batch_order, cache_teacher, distill, distill_loss, load_teacher
from tests.conftest import streamed, tiny_model
from tests.refine.conftest import teacher_and_student

CPU = torch.device("cpu")


def _cache(teacher, ids: torch.Tensor, topk: int, path: Path, dtype: torch.dtype = torch.float32) -> None:
    cache_teacher(streamed(teacher), adapter_for(teacher.config.model_type), ids, topk, dtype, path)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen2"])
def test_the_streamed_teacher_gives_the_whole_models_top_k(arch: str, tmp_path: Path) -> None:
    """One block at a time, every row through each block, equals the whole
    model's forward of each row: tied heads, Gemma's soft cap and sliding
    windows included."""
    teacher = tiny_model(arch, layers=3).float()
    if arch == "gemma3_text":
        teacher.config.final_logit_softcapping = 30.0
    ids = torch.randint(3, 128, (3, 24), generator=torch.Generator().manual_seed(1))
    _cache(teacher, ids, 8, tmp_path / TEACHER_FILE)
    values, indices = load_teacher(tmp_path / TEACHER_FILE)
    with torch.no_grad():
        logp = torch.cat([torch.log_softmax(teacher(input_ids=ids[r : r + 1]).logits.float(), -1) for r in range(3)])
    v, i = logp.topk(8, dim=-1)
    assert torch.equal(indices.long(), i)
    torch.testing.assert_close(values.float(), v.half().float(), rtol=0, atol=2e-3)


def _kl(model, ids, work: Path) -> float:
    """Top-k KL: the distillation cross-entropy minus the teacher's own entropy."""
    values, indices = load_teacher(work / TEACHER_FILE)
    p = torch.softmax(values.float(), dim=-1)
    entropy = float(-(p * torch.log(p)).sum(-1).mean())
    with torch.no_grad():
        return float(distill_loss(model, ids, values, indices, chunk=8)) - entropy


def test_distillation_moves_the_student_toward_the_teacher(tmp_path: Path) -> None:
    teacher, student, ids = teacher_and_student()
    _cache(teacher, ids, 16, tmp_path / TEACHER_FILE)
    values, indices = load_teacher(tmp_path / TEACHER_FILE)
    assert values.dtype == torch.float16 and indices.shape == (8, 32, 16)
    before = _kl(student, ids, tmp_path)
    assert before > 0
    settings = GlobalSettings(epochs=8, lr=5e-2, batch_size=2, topk=16, chunk=8)
    info = distill(student, ids, tmp_path, settings, CPU, torch.float32, torch.bfloat16)
    assert info["steps"] == 32
    assert _kl(student, ids, tmp_path) < 0.8 * before
    assert not any(p.requires_grad for p in student.parameters())


class _Stop(Exception):
    pass


def test_resume_from_progress_is_exact(tmp_path: Path) -> None:
    settings = GlobalSettings(epochs=2, lr=1e-2, batch_size=2, topk=16, chunk=8, checkpoint_every=3)
    teacher, student, ids = teacher_and_student()
    _cache(teacher, ids, 16, tmp_path / "a" / TEACHER_FILE)
    distill(student, ids, tmp_path / "a", settings, CPU, torch.float32, torch.bfloat16)
    reference = student.state_dict()

    _, student, _ = teacher_and_student()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / TEACHER_FILE).write_bytes((tmp_path / "a" / TEACHER_FILE).read_bytes())

    def crash(step: int, steps: int, loss: float) -> None:
        if step == 5:
            raise _Stop

    with pytest.raises(_Stop):
        distill(student, ids, tmp_path / "b", settings, CPU, torch.float32, torch.bfloat16, crash)
    _, student, _ = teacher_and_student()  # a new process starts from the input pivot again
    distill(student, ids, tmp_path / "b", settings, CPU, torch.float32, torch.bfloat16)
    resumed = student.state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_batch_order_is_fixed_by_the_seed() -> None:
    a = batch_order(10, 3, 2, seed=1)
    assert a == batch_order(10, 3, 2, seed=1) and a != batch_order(10, 3, 2, seed=2)
    assert sorted(i for step in a[:4] for i in step) == list(range(10))
