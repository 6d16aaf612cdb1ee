"""Content fingerprints of models and settings, so results are tied to exactly
what produced them (reference scores are cached by them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from onecomp.io import atomic_write_json
from onecomp.paths import cache_dir

_CHUNK = 1 << 22


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    """sha256 of a file, memoized in the cache by (path, size, mtime)."""
    stat = path.stat()
    memo_file = cache_dir() / "file-hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    memo[key] = h.hexdigest()
    atomic_write_json(memo_file, memo)
    return memo[key]


def model_fingerprint(model_dir: Path) -> str:
    """Hash of config.json and the contents of every weight file."""
    model_dir = Path(model_dir)
    parts = {"config": hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()}
    for f in sorted(model_dir.glob("*.safetensors")):
        parts[f.name] = _file_sha256(f)
    return hash_json(parts)
