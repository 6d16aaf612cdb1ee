"""A first GGUF conversion shows our progress, not transformers' own tqdm bar."""

from __future__ import annotations

from contextlib import contextmanager

from transformers import modeling_gguf_pytorch_utils as gguf_utils

from onecomp.models.gguf import _tensor_progress


class Recorder:
    def __init__(self) -> None:
        self.tasks: list[tuple[str, int | None]] = []
        self.steps = 0

    @contextmanager
    def task(self, description: str, total: int | None):
        self.tasks.append((description, total))
        yield self

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.steps += n

    def set_total(self, total: int) -> None:
        pass

    def info(self, message: str) -> None:
        pass


def test_transformers_tensor_bar_is_replaced_by_ours_for_the_conversion_only(capsys) -> None:
    original = gguf_utils.tqdm
    reporter = Recorder()
    with _tensor_progress(reporter):
        got = list(gguf_utils.tqdm(["a", "b", "c"], desc="Converting and de-quantizing GGUF tensors..."))
    assert got == ["a", "b", "c"]
    assert reporter.tasks == [("reading GGUF tensors", 3)] and reporter.steps == 3
    assert gguf_utils.tqdm is original
    err = capsys.readouterr().err
    assert "de-quantizing" not in err and "it/s" not in err
