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
    assert oct(final.stat().st_mode & 0o777) == oct(io.dir_mode())


def test_partials_left_by_a_kill_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".3-global.abc.partial").mkdir()
    (tmp_path / "1-layerwise").mkdir()
    io.remove_partials(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["1-layerwise"]


@pytest.fixture(params=[0o022, 0o077, 0o027], ids=lambda m: f"umask{m:03o}")
def user_umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_umask_is_read_without_changing_it(user_umask) -> None:
    assert io.umask() == user_umask
    assert os.umask(user_umask) == user_umask  # still the user's own


def test_umask_fallback_is_the_one_read_at_import(monkeypatch) -> None:
    monkeypatch.setattr(io, "_umask_from_proc", lambda: None)
    monkeypatch.setattr(io, "_IMPORT_UMASK", 0o027)
    assert (io.file_mode(), io.dir_mode()) == (0o640, 0o750)


def test_files_follow_the_umask(tmp_path: Path, user_umask) -> None:
    io.atomic_write_json(tmp_path / "new" / "state.json", {"v": 1})
    assert _mode(tmp_path / "new" / "state.json") == 0o666 & ~user_umask
    assert _mode(tmp_path / "new") == 0o777 & ~user_umask


def test_directories_follow_the_umask_whatever_wrote_inside(tmp_path: Path, user_umask) -> None:
    import torch
    from safetensors.torch import save_file

    final = tmp_path / "pivot"
    with io.atomic_directory(final) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # created 0600 whatever the umask
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "a.json").write_text("{}")
        os.chmod(tmp / "sub" / "a.json", 0o400)
    for path in [final, *final.rglob("*")]:
        assert _mode(path) == (0o777 if path.is_dir() else 0o666) & ~user_umask, path


def test_a_link_inside_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "theirs.txt"
    outside.write_text("not ours")
    os.chmod(outside, 0o600)
    with io.atomic_directory(tmp_path / "pivot") as tmp:
        (tmp / "link").symlink_to(outside)
    assert _mode(outside) == 0o600
