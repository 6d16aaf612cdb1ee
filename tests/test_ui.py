"""Progress a person can follow: plain throttled lines where a bar would be cut."""

from __future__ import annotations

import logging
import re

from onecomp.ui import PlainProgress, RichReporter

PLAIN = re.compile(r"^[\w .-]+: \d+/\d+ \(\d+%\) \d+:\d\d:\d\d elapsed(, .*)?$")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_is_throttled_and_ends_with_the_last_step() -> None:
    clock, lines = Clock(), []
    task = PlainProgress("layer-wise gptq w4g128", 30, lines.append, every=5.0, clock=clock)
    task.begin()
    for step in range(30):
        clock.now += 1.0  # a step a second: a line every five at most
        task.advance(1, status=f"block {step}")
    task.finish()
    assert lines[0] == "layer-wise gptq w4g128: 0/30 (0%) 0:00:00 elapsed"
    assert lines[-1] == "layer-wise gptq w4g128: 30/30 (100%) 0:00:30 elapsed, block 29"
    assert [line.split(":")[1].split("/")[0].strip() for line in lines] == ["0", "5", "10", "15", "20", "25", "30"]  # one per 5 s
    assert all(PLAIN.match(line) for line in lines), lines


def test_plain_progress_prints_every_slow_step_and_no_duplicate_last_line() -> None:
    clock, lines = Clock(), []
    task = PlainProgress("block-wise refinement", 3, lines.append, every=5.0, clock=clock)
    task.begin()
    for _ in range(3):
        clock.now += 60.0
        task.advance(1)
    task.finish()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "0/3 (0%) 0:00:00 elapsed", "1/3 (33%) 0:01:00 elapsed", "2/3 (66%) 0:02:00 elapsed", "3/3 (100%) 0:03:00 elapsed",
    ]


def test_plain_progress_without_a_total() -> None:
    clock, lines = Clock(), []
    task = PlainProgress("task x", None, lines.append, clock=clock)
    task.advance(7)
    task.finish()
    assert lines == ["task x: 7 done, 0:00:00 elapsed"]


def test_reporter_outside_a_terminal_writes_plain_lines_to_stderr_and_the_log(capsys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="onecomp")
    with RichReporter().task("perplexity of the original model on builtin", 4) as task:
        for _ in range(4):
            task.advance(1)
    RichReporter().info("stage 1/2: [bold]layer-wise[/bold]")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "perplexity of the original model on builtin: 0/4 (0%) 0:00:00 elapsed"
    assert err[-1].startswith("perplexity of the original model on builtin: 4/4 (100%)")
    assert all(PLAIN.match(line) for line in err) and not any("…" in line or "━" in line for line in err)
    logged = [r.getMessage() for r in caplog.records]
    assert logged[0] == err[0] and "stage 1/2: layer-wise" in logged
