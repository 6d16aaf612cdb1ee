"""Where onecomp keeps caches: the user's cache dir, overridable, never the repository."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "ONECOMP_CACHE"


def cache_dir() -> Path:
    """Root of onecomp's cache (converted models, reference scores).

    ``$ONECOMP_CACHE`` overrides the platform's user cache directory.
    """
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path(platformdirs.user_cache_dir("onecomp"))
    path.mkdir(parents=True, exist_ok=True)
    return path
