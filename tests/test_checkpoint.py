"""Pivots are written for the user who will share them: their umask, not 0600."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onecomp.checkpoint import save_pivot
from tests.conftest import tiny_model


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
