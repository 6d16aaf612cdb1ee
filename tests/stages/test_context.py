"""A damaged state.json ends in one line saying what to do, never a JSONDecodeError."""

from __future__ import annotations

import pytest

from onecomp.errors import OneCompError
from onecomp.stages.context import read_state, write_state


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
