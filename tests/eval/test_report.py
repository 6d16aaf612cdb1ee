from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from onecomp.eval.report import metric_columns, table, write_report


def _results() -> dict:
    orig = {"metrics": {"ppl_builtin": 15.0, "acc_onecomp_wiki_title": 0.8}, "stderr": {"acc_onecomp_wiki_title": 0.02}, "bits_per_weight": 16.0, "weight_bytes": 2**28}
    piv = lambda stage, ppl, acc: {  # noqa: E731
        "stage": stage, "metrics": {"ppl_builtin": ppl, "acc_onecomp_wiki_title": acc}, "stderr": {"acc_onecomp_wiki_title": 0.025},
        "ratios": {"ppl_builtin": ppl / 15.0, "acc_onecomp_wiki_title": acc / 0.8}, "bits_per_weight": 3.16, "weight_bytes": 2**26,
        "stage_seconds": 100.0, "note": "",
    }
    return {
        "schema": 3, "original": orig, "best": "2-blockwise",
        "pivots": {"1-layerwise": piv("layerwise", 25.0, 0.6), "2-blockwise": piv("blockwise", 20.0, 0.7)},
        "protocol": {"ppl": {"builtin": {"nwindows": 64, "seqlen": 512, "bos": False, "sha256": "ab" * 32}},
                     "tasks": {"onecomp_wiki_title": {"items": 300, "items_total": 300, "num_fewshot": 0, "version": 1.0, "lm_eval": "0.4"}}},
    }


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_table_has_ratios_and_recovery():
    header, body = table(_results())
    assert metric_columns(_results()) == ["ppl_builtin", "acc_onecomp_wiki_title"]
    assert "x original" in header and "recovery" in header
    layerwise = body[1]
    assert layerwise[0] == "1-layerwise" and "25.000" in layerwise and "0.750" in layerwise and "60.0 ± 2.5" in layerwise


def test_report_files_are_self_contained(tmp_path):
    written = write_report(tmp_path, _results())
    assert {p.name for p in written} == {"report.md", "report.html", "ppl_vs_bpw.png", "acc_vs_bpw.png"}
    parser = _Collect()
    text = (tmp_path / "report.html").read_text()
    parser.feed(text)
    assert text.startswith("<!DOCTYPE html>") and "table" in parser.tags
    assert len(parser.images) == 2
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in text  # nothing fetched from outside
    md = (tmp_path / "report.md").read_text()
    assert "| 2-blockwise |" in md and "![ppl_vs_bpw.png](ppl_vs_bpw.png)" in md


def test_report_without_tasks_has_no_accuracy_plot(tmp_path):
    res = _results()
    for row in [res["original"], *res["pivots"].values()]:
        row["metrics"].pop("acc_onecomp_wiki_title")
    names = {p.name for p in write_report(tmp_path, res)}
    assert "acc_vs_bpw.png" not in names and "ppl_vs_bpw.png" in names


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (Debian: apt install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    write_report(tmp_path, _results())
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,1600", (tmp_path / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert shot.is_file() and shot.stat().st_size > 10_000  # the page and its plots were drawn
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert "<img" in dom.stdout and "Compression report" in dom.stdout
    assert "Uncaught" not in proc.stderr + dom.stderr  # no script or page errors
