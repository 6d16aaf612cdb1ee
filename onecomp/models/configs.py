"""A model directory's config.json, read and turned into a transformers config
with one clear line for every way it can be wrong: below checkpoints, the
profile and the streaming runtime, which all start from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import transformers

from onecomp.errors import OneCompError


def read_config(path: Path) -> dict[str, Any]:
    """A model directory's config.json: valid JSON and a mapping."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise OneCompError(f"{path} is not a model directory (no config.json)")
    try:
        raw = json.loads(cfg_file.read_text())
    except OSError as exc:
        raise OneCompError(f"cannot read {cfg_file}: {exc.strerror}") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise OneCompError(f"{cfg_file} is not valid JSON; replace it with the model's original config.json") from None
    if not isinstance(raw, dict):
        raise OneCompError(f"{cfg_file} is not a JSON mapping; replace it with the model's original config.json")
    return raw


def auto_config(raw: dict[str, Any], path: Path) -> transformers.PretrainedConfig:
    """The transformers config of a config.json (without its quantization_config),
    an unknown architecture or a bad value ending in one line."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from onecomp.models.adapters import ADAPTERS

    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise OneCompError(f"{Path(path) / 'config.json'} has no model_type; it is not a transformers model config")
    if model_type not in CONFIG_MAPPING:
        raise OneCompError(
            f"{Path(path) / 'config.json'}: model_type {model_type!r} is unknown to the installed transformers "
            f"{transformers.__version__}; onecomp supports {', '.join(sorted(ADAPTERS))}"
        )
    try:
        return transformers.AutoConfig.for_model(**raw)
    except (TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OneCompError(f"{Path(path) / 'config.json'} is not a valid {model_type} config: {first}") from None


def model_config(path: Path) -> transformers.PretrainedConfig:
    """The transformers config of a model directory (a pivot's quantization_config left out)."""
    raw = read_config(path)
    raw.pop("quantization_config", None)
    return auto_config(raw, path)
