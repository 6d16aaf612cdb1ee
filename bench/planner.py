"""Mixed precision vs uniform integer formats on the built-in model, at equal or
higher bits per weight for the uniform ones: PPL after the layer-wise stage.

    .venv/bin/python bench/planner.py [--budgets 3.0,2.5,3.0u] [--uniform w2g32,w3ch,w3g128] [--out bench-out/planner] [--eval-text pydoc]

A budget ending in "u" is planned with --no-fused-groups (q/k/v and gate/up free
to differ). --known NAME=BPW:PPL adds a uniform row measured elsewhere (say so
where the number is reported).

Steps (each a command in its own process; finished jobs in --out are reused):
1. `onecomp plan MODEL --bpw B0` measures sensitivity once (its time is the
   measuring cost) and plans the first budget;
2. `onecomp plan MODEL --bpw B --measurement ...` re-plans every other budget
   from the saved measurement (timed: the re-planning cost);
3. `onecomp compress MODEL --plan .../plan.json` for every budget and
   `onecomp compress MODEL --bits b --group-size g` for every uniform format;
4. optionally every pivot is scored on a second text (`onecomp eval --ppl`).
Prints a markdown table and writes a PNG plot of PPL vs bits per weight.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path


def _onecomp(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "onecomp.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _complete(job: Path) -> bool:
    state = job / "state.json"
    return state.is_file() and bool(json.loads(state.read_text()).get("complete"))


def _compress(model: str, job: Path, *args: str) -> dict:
    if not _complete(job):
        _onecomp("compress", model, *args, "--eval", "builtin", "--output", str(job), "--resume" if (job / "state.json").is_file() else "--overwrite")
    return json.loads((job / "eval" / "results.json").read_text())


def _second_text(pivot: Path, text: str) -> float:
    cache = pivot.parent.parent / "eval" / f"{text}.json"
    if not cache.is_file():
        out = subprocess.run(
            [sys.executable, "-m", "onecomp.cli", "eval", str(pivot), "--ppl", text, "--max-windows", "32"],
            check=True, capture_output=True, text=True,
        ).stdout
        cache.write_text(out[out.index("{"):])
    return json.loads(cache.read_text())["metrics"][f"ppl_{text}"]


def _row(kind: str, name: str, res: dict, extra: dict) -> dict:
    p = res["pivots"]["1-layerwise"]
    return {"kind": kind, "name": name, "bpw": p["bits_per_weight"], "MiB": p["weight_bytes"] / 2**20, "ppl": p["metrics"]["ppl_builtin"],
            "ratio": p["ratios"]["ppl_builtin"], "stage_s": p["stage_seconds"], "path": p["path"], **extra}


def _plot(rows: list[dict], orig: float, path: Path, key: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, marker in (("uniform", "o"), ("mixed", "s")):
        pts = sorted((r["bpw"], r[key]) for r in rows if r["kind"] == kind and key in r)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{kind} (GPTQ, layer-wise)")
    for r in rows:
        if key in r:
            ax.annotate(r["name"], (r["bpw"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(orig, color="gray", linestyle="--", linewidth=1, label="original")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (everything stored counted)")
    ax.set_ylabel(f"perplexity ({label})")
    ax.set_title("SmolLM2-135M: mixed-precision plans vs uniform formats")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budgets", default="2.5,3.0")
    ap.add_argument("--uniform", default="w2g128,w2g64,w2g32,w3ch,w3g128")
    ap.add_argument("--out", type=Path, default=Path("bench-out/planner"))
    ap.add_argument("--eval-text", default=None, help="also score every pivot on this text (e.g. pydoc)")
    ap.add_argument("--plot", type=Path, default=None, help="PNG path (default: OUT/ppl-vs-bpw.png)")
    ap.add_argument("--known", action="append", default=[], help="NAME=BPW:PPL, a uniform row measured elsewhere")
    args = ap.parse_args()
    out: Path = args.out
    budgets = [(float(b.rstrip("u")), b.endswith("u")) for b in args.budgets.split(",")]
    timings: dict[str, float] = {}
    measured = out / f"plan-{budgets[0][0]:g}"
    if not (measured / "plan.json").is_file():
        timings["measure_and_plan_s"] = _onecomp("plan", args.model, "--bpw", f"{budgets[0][0]:g}", "--output", str(measured))
    measurement = measured / "measurement.json"
    rows = []
    for b, unfused in budgets:
        tag = f"{b:g}-unfused" if unfused else f"{b:g}"
        pdir = out / f"plan-{tag}"
        if not (pdir / "plan.json").is_file():
            extra = ["--no-fused-groups"] if unfused else []
            timings[f"replan_{tag}_s"] = _onecomp("plan", args.model, "--bpw", f"{b:g}", "--measurement", str(measurement), "--output", str(pdir), *extra)
        res = _compress(args.model, out / f"mixed-{tag}", "--plan", str(pdir / "plan.json"))
        predicted = json.loads((pdir / "plan.json").read_text())["predicted"]["ppl_ratio"]
        rows.append(_row("mixed", f"mixed {tag}", res, {"predicted": predicted}))
    for label in args.uniform.split(","):
        m = re.fullmatch(r"w(\d)(?:g(\d+)|(ch))", label)
        assert m, label
        group = "-1" if m.group(3) else m.group(2)
        res = _compress(args.model, out / f"uniform-{label}", "--bits", m.group(1), "--group-size", group)
        rows.append(_row("uniform", label, res, {}))
    orig = res["original"]["metrics"]["ppl_builtin"]
    if args.eval_text:
        for r in rows:
            r[args.eval_text] = _second_text(Path(r["path"]), args.eval_text)
    for known in args.known:
        name, _, vals = known.partition("=")
        bpw, ppl = (float(v) for v in vals.split(":"))
        rows.append({"kind": "uniform", "name": f"{name} (known)", "bpw": bpw, "MiB": float("nan"), "ppl": ppl, "ratio": ppl / orig, "stage_s": float("nan")})
    rows.sort(key=lambda r: r["bpw"])
    info = json.loads(measurement.read_text())["info"]
    print(f"original PPL (builtin held-out): {orig:.3f}; measuring took {info['seconds']:.0f} s "
          f"(gradient pass over {info['gradient']['tokens']} tokens, every candidate of every layer)")
    for k, v in timings.items():
        print(f"{k}: {v:.1f} s")
    extra = f" PPL {args.eval_text} |" if args.eval_text else ""
    print(f"\n| plan | bits/weight | weights MiB | PPL | x original | predicted x |{extra} layer-wise s |")
    print("|---|---|---|---|---|---|" + ("---|" if args.eval_text else "") + "---|")
    for r in rows:
        pred = f"{r['predicted']:.2f}" if "predicted" in r else "-"
        second = (f" {r[args.eval_text]:.2f} |" if args.eval_text in r else " - |") if args.eval_text else ""
        print(f"| {r['name']} | {r['bpw']:.3f} | {r['MiB']:.1f} | {r['ppl']:.3f} | {r['ratio']:.3f} | {pred} |{second} {r['stage_s']:.0f} |")
    _plot(rows, orig, args.plot or out / "ppl-vs-bpw.png", "ppl", "built-in held-out text")
    if args.eval_text:
        _plot(rows, float("nan"), (args.plot or out / "ppl-vs-bpw.png").with_name(f"ppl-vs-bpw-{args.eval_text}.png"), args.eval_text, args.eval_text)


if __name__ == "__main__":
    main()
