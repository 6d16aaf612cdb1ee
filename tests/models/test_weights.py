"""Weight files are checked from their headers before anything is loaded, and
only safetensors that the model is actually loaded from count as its weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from onecomp.errors import OneCompError
from onecomp.models.weights import DamagedFile, check_weights, read_header, weight_files


def _file(path: Path) -> Path:
    save_file({"a": torch.zeros(4, 8), "b": torch.ones(3, dtype=torch.int32)}, str(path))
    return path


def _raw(path: Path, header: dict, data: bytes = b"") -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_an_intact_file_passes(tmp_path) -> None:
    header = read_header(_file(tmp_path / "m.safetensors"))
    assert header["a"]["shape"] == [4, 8] and header["b"]["dtype"] == "I32"


@pytest.mark.parametrize("keep", [0, 5, 20, -1])
def test_a_truncated_file_is_refused(tmp_path, keep) -> None:
    path = _file(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-10])
    with pytest.raises(DamagedFile) as exc:
        read_header(path)
    assert "not an intact safetensors file" in _one_line(exc) and str(path) in str(exc.value)


def test_garbage_is_refused(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"\xff\xfe{{{{" + b"0" * 64)
    with pytest.raises(DamagedFile, match="header is not valid JSON"):
        read_header(path)


@pytest.mark.parametrize(
    "entry,needle",
    [
        ({"dtype": "Q9", "shape": [2], "data_offsets": [0, 2]}, "unknown dtype 'Q9'"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "does not match its shape"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "past the end of the file"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "invalid shape"),
        ("x", "not a tensor entry"),
    ],
)
def test_a_bad_tensor_entry_is_refused(tmp_path, entry, needle) -> None:
    path = _raw(tmp_path / "m.safetensors", {"t": entry}, b"\0" * 8)
    with pytest.raises(DamagedFile, match=needle):
        read_header(path)


def test_only_model_safetensors_or_its_index_are_weights(tmp_path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"decoy")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(OneCompError) as exc:
        weight_files(tmp_path)
    assert "holds only pickled weights (pytorch_model.bin)" in _one_line(exc)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(OneCompError, match="has no model.safetensors"):
        weight_files(tmp_path)
    _file(tmp_path / "model.safetensors")
    assert weight_files(tmp_path) == [tmp_path / "model.safetensors"]


def test_a_sharded_model_is_checked_shard_by_shard(tmp_path) -> None:
    save_file({"a": torch.zeros(2)}, str(tmp_path / "model-1.safetensors"))
    save_file({"b": torch.zeros(2)}, str(tmp_path / "model-2.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))
    assert sorted(p.name for p in check_weights(tmp_path)) == ["model-1.safetensors", "model-2.safetensors"]
    index.write_text(json.dumps({"weight_map": {"a": "model-2.safetensors"}}))
    with pytest.raises(OneCompError, match="puts a in model-2.safetensors, which does not hold it"):
        check_weights(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    with pytest.raises(OneCompError, match="missing.safetensors, which is missing"):
        check_weights(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": "../pytorch_model.bin"}}))
    with pytest.raises(OneCompError, match="not a safetensors file beside it"):
        check_weights(tmp_path)
    index.write_text("{not json")
    with pytest.raises(OneCompError, match="is not valid JSON"):
        check_weights(tmp_path)


def test_a_damaged_work_file_is_dropped_with_a_warning(tmp_path, caplog) -> None:
    from onecomp.models.weights import drop_damaged

    path = _file(tmp_path / "teacher.safetensors")
    assert drop_damaged(path) is None and path.is_file()
    path.write_bytes(path.read_bytes()[:-10])
    with caplog.at_level("WARNING", logger="onecomp"):
        note = drop_damaged(path)
    assert note is not None and "is damaged" in note and not path.exists()
    assert note in caplog.text
    assert drop_damaged(path) is None
