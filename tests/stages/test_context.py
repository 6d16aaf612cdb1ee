"""The stage context: a damaged state.json ends in one line saying what to do;
warnings are kept once in state.json, shown, and under strict a one-line failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from onecomp.errors import OneCompError
from onecomp.reporter import NullReporter
from onecomp.stages.context import JobWarning, StrictError, job_warnings, read_state, record_warning, write_state


def test_state_round_trip(tmp_path) -> None:
    assert read_state(tmp_path) == {}
    write_state(tmp_path, done=["layerwise"])
    assert read_state(tmp_path) == {"done": ["layerwise"]}


@pytest.mark.parametrize("content", [b"", b'{"version": "0.1", "done": [', b"\xff\xfe\x00", b"[1, 2]"])
def test_a_damaged_state_is_one_line(tmp_path, content) -> None:
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(OneCompError) as exc:
        read_state(tmp_path)
    assert "is damaged" in str(exc.value) and "--overwrite" in str(exc.value) and "\n" not in str(exc.value)
    assert (tmp_path / "state.json").read_bytes() == content



class Shown(NullReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


def test_a_warning_is_kept_once_and_shown_once(tmp_path: Path) -> None:
    write_state(tmp_path, done=["layerwise"])
    shown = Shown()
    w = JobWarning("layerwise", "damping raised", "model.layers.0.mlp.up_proj")
    record_warning(tmp_path, w, False, shown)
    record_warning(tmp_path, w, False, shown)  # a resumed stage meets it again
    record_warning(tmp_path, JobWarning("plan", "predicted perplexity is 3x"), False, shown)
    assert job_warnings(tmp_path) == [
        {"stage": "layerwise", "layer": "model.layers.0.mlp.up_proj", "message": "damping raised"},
        {"stage": "plan", "message": "predicted perplexity is 3x"},
    ]
    assert shown.lines == ["warning: layerwise model.layers.0.mlp.up_proj: damping raised", "warning: plan: predicted perplexity is 3x"]
    assert read_state(tmp_path)["done"] == ["layerwise"]  # the rest of the state is untouched


def test_strict_stops_with_one_line_naming_the_warning_and_keeps_it(tmp_path: Path) -> None:
    w = JobWarning("blockwise", "format x has no training view: this layer was not trained", "model.layers.1.mlp.down_proj")
    shown = Shown()
    with pytest.raises(StrictError) as err:
        record_warning(tmp_path, w, True, shown)
    assert shown.lines == []  # the error is what shows it
    message = str(err.value)
    assert isinstance(err.value, OneCompError) and "\n" not in message
    assert "blockwise model.layers.1.mlp.down_proj: format x has no training view" in message
    assert f"onecomp resume {tmp_path} --no-strict" in message
    assert job_warnings(tmp_path) == [w.to_json()]  # a resumed job still reports it
