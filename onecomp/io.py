"""Atomic file and directory writes: a crash never leaves a half file under its final name."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask_from_proc() -> int | None:
    """The process umask as Linux reports it, read without changing it; None elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return None


def _umask_by_swap() -> int:
    """The umask where /proc cannot tell it: a set-and-restore, done once (at import),
    with a strict mask in between so a file created meanwhile elsewhere is not opened up."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_IMPORT_UMASK = None if _umask_from_proc() is not None else _umask_by_swap()


def umask() -> int:
    """The user's umask: what we write gets the modes their own tools would give it."""
    mask = _umask_from_proc()
    if mask is None:
        assert _IMPORT_UMASK is not None
        return _IMPORT_UMASK
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything under it the umask's modes. Some writers
    (tempfile, safetensors) create 0600 files whatever the umask; symlinks are
    left alone, so nothing outside ``root`` is touched."""
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
    files, dirs = file_mode(), dir_mode()
    for path in paths:
        if path.is_symlink():
            continue
        os.chmod(path, dirs if path.is_dir() else files)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path for a writer to fill; on success it is
    synced, given the umask's mode and renamed to ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path, what: str) -> Any:
    """A JSON file the user named, or a one-line error saying what is wrong with it."""
    from onecomp.errors import OneCompError

    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise OneCompError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError:
        raise OneCompError(f"{what} {path} is not valid JSON") from None


def save_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, with a full disk raised as the OSError(ENOSPC)
    every other write raises: safetensors reports it as its own SafetensorError."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        if "os error 28" in str(exc) or "No space left" in str(exc):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename.

    An existing ``final`` is moved aside first and removed only after the new
    directory is in place, so at every instant one complete version exists.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield tmp
        follow_umask(tmp)
        for child in tmp.rglob("*"):
            if child.is_file() and not child.is_symlink():
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_partials(parent: Path) -> None:
    """Drop temporary directories left by an interrupted :func:`atomic_directory`."""
    for tmp in Path(parent).glob(".*.partial"):
        shutil.rmtree(tmp, ignore_errors=True)
