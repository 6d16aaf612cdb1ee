"""Atomic writes: a failure at any point leaves either the old complete file or
directory or the new one under the final name, never a partial one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import onecomp.io as io


def test_atomic_file_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    io.atomic_write_json(path, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        io.atomic_write_json(path, {"v": 2})
    monkeypatch.undo()
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


def test_atomic_directory_failure_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    final = tmp_path / "pivots" / "2-blockwise"
    with pytest.raises(RuntimeError):
        with io.atomic_directory(final) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("simulated crash while writing")
    assert not final.exists()
    assert list((tmp_path / "pivots").iterdir()) == []


def test_atomic_directory_replaces_a_complete_version(tmp_path: Path) -> None:
    final = tmp_path / "pivot"
    for version in (b"one", b"two"):
        with io.atomic_directory(final) as tmp:
            (tmp / "model.safetensors").write_bytes(version)
    assert (final / "model.safetensors").read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["pivot"]
    assert oct(final.stat().st_mode & 0o777) == oct(0o755)


def test_partials_left_by_a_kill_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".3-global.abc.partial").mkdir()
    (tmp_path / "1-layerwise").mkdir()
    io.remove_partials(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["1-layerwise"]
