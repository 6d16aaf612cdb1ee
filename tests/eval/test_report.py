from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from onecomp.eval.report import metric_columns, size_table, table, write_report


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
    for name in ("ppl_vs_bpw.png", "acc_vs_bpw.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parser = _Collect()
    text = (tmp_path / "report.html").read_text()
    parser.feed(text)
    assert text.startswith("<!DOCTYPE html>") and "table" in parser.tags
    assert parser.tags.count("svg") == 2 and not parser.images  # the plots inline, as vectors
    assert not re.search(r'(?:src|href)="(?!#)', text) and "<script" not in text and "<link" not in text  # nothing fetched
    ids = re.findall(r' id="([^"]*)"', text)
    assert len(ids) == len(set(ids))  # two inline plots share no id
    md = (tmp_path / "report.md").read_text()
    assert "| 2-blockwise |" in md and "![ppl_vs_bpw.png](ppl_vs_bpw.png)" in md


def _job_results() -> dict:
    res = _results()
    res["job"] = {
        "model": "smollm2-135m", "method": "gptq + QEP", "format": "int3 g128", "stages": ["layerwise", "blockwise"],
        "calibration": {"source": "builtin", "nsamples": 128, "seqlen": 512, "seed": 0}, "device": "cpu",
        "command": "onecomp compress smollm2-135m --bits 3 --stages layerwise,blockwise", "date": "2026-12-07T12:00:00+00:00", "version": "0.9.1",
    }
    res["selection"] = {
        "text": "builtin-selection", "metric": "ppl", "values": {"1-layerwise": 26.5, "2-blockwise": 21.25}, "chosen": "2-blockwise",
        "rule": "...", "protocol": {"split": "select", "nwindows": 16, "seqlen": 512, "sha256": "cd" * 32},
    }
    return res


def test_report_names_the_job_and_how_the_best_pivot_was_chosen(tmp_path):
    write_report(tmp_path, _job_results())
    for name in ("report.md", "report.html"):
        text = html.unescape((tmp_path / name).read_text())
        for needle in ("smollm2-135m", "gptq + QEP", "int3 g128", "layerwise, blockwise", "builtin, 128 samples x 512 tokens, seed 0",
                       "onecomp compress smollm2-135m --bits 3 --stages layerwise,blockwise", "2026-12-07", "onecomp 0.9.1"):
            assert needle in text, (name, needle)
        assert "chosen by perplexity on the built-in selection text (16 windows of 512 tokens" in text
        assert "1-layerwise 26.500, 2-blockwise 21.250" in text and "not on the text reported here" in text


def test_accuracy_plot_has_error_bars_and_noise_is_named(tmp_path):
    res = _job_results()
    res["pivots"]["2-blockwise"]["metrics"]["acc_onecomp_wiki_title"] = 0.83  # above the original by 3 points: noise
    write_report(tmp_path, res)
    text = (tmp_path / "report.html").read_text()
    for row in ("original", "1-layerwise", "2-blockwise"):
        assert f'id="accuracy-stderr-acc_onecomp_wiki_title-{row}"' in text  # a +-1 stderr bar per checkpoint
    assert "stderr" not in text.split('<figure id="ppl_vs_bpw">')[1].split("</figure>")[0]  # perplexity has none
    assert "bars: ± 1 standard error" in text
    md = (tmp_path / "report.md").read_text()
    assert "wiki title (acc): 2-blockwise +3.0 points against the original (2 standard errors = 6.4): within noise" in md
    assert "wiki title (acc): 1-layerwise -20.0 points against the original (2 standard errors = 6.4): worse than the original" in md


def test_tables_show_one_named_metric_per_task_and_fit_the_page():
    res = _job_results()
    for row in [res["original"], *res["pivots"].values()]:
        row["metrics"]["acc_norm_onecomp_wiki_title"] = row["metrics"]["acc_onecomp_wiki_title"] - 0.16
        row["metrics"]["acc_norm_onecomp_wiki_continuation"], row["metrics"]["acc_onecomp_wiki_continuation"] = 0.7, 0.6
        row["metrics"]["ppl_pydoc"] = 30.0
    header, body = table(res)
    assert metric_columns(res) == ["ppl_builtin", "ppl_pydoc", "acc_onecomp_wiki_title", "acc_norm_onecomp_wiki_continuation"]
    assert "wiki title (acc) %" in header and "wiki continuation (acc_norm) %" in header
    assert not any("acc_norm) " in h and "title" in h for h in header)
    cost_header, _ = size_table(res)
    assert len(header) <= 9 and len(cost_header) <= 6  # two narrow tables, not one of 15 columns


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
    assert "<svg" in dom.stdout and "Compression report" in dom.stdout
    assert "Uncaught" not in proc.stderr + dom.stderr  # no script or page errors
