"""Staged refinement on the built-in model: each pivot's PPL, size and stage time.

    .venv/bin/python bench/refinement.py [--bits 3,2] [--out bench-out] [--eval-text pydoc]

For each bit width: one `onecomp compress MODEL --bits B --stages
layerwise,blockwise,global` job (finished jobs in --out are reused). Prints one
markdown table with a row per pivot. With --eval-text, every pivot is also
scored on a second text (`onecomp eval`), to check that gains are not specific
to the held-out Wikipedia leads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run_job(model: str, bits: int, group: int, out: Path) -> dict:
    job_dir = out / f"refine-w{bits}g{group}"
    results = job_dir / "eval" / "results.json"
    state = job_dir / "state.json"
    done = state.is_file() and json.loads(state.read_text()).get("complete")
    if not done:
        cmd = [sys.executable, "-m", "onecomp.cli", "compress", model, "--bits", str(bits), "--group-size", str(group),
               "--stages", "layerwise,blockwise,global", "--eval", "builtin", "--output", str(job_dir)]
        cmd.append("--resume" if state.is_file() else "--overwrite")
        subprocess.run(cmd, check=True)
    return json.loads(results.read_text())


def score(checkpoint: str, text: str) -> float:
    res = subprocess.run([sys.executable, "-m", "onecomp.cli", "eval", checkpoint, "--ppl", text], check=True, capture_output=True, text=True)
    return json.loads(res.stdout)["metrics"][f"ppl_{text}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", default="3,2")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--eval-text", default=None, help="a second text to score every pivot on (e.g. pydoc)")
    args = ap.parse_args()
    extra = args.eval_text
    head = "| format | pivot | bits/weight | weights MiB | PPL | x original | vs previous | stage s | best |"
    if extra:
        head += f" PPL {extra} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    orig_extra = score(args.model, extra) if extra else None
    for bits in [int(b) for b in args.bits.split(",")]:
        res = run_job(args.model, bits, args.group_size, args.out)
        prev = None
        for name, p in res["pivots"].items():
            ppl = p["metrics"]["ppl_builtin"]
            change = "-" if prev is None else f"{100 * (ppl / prev - 1):+.1f}%"
            row = (f"| w{bits} g{args.group_size} | {name} | {p['bits_per_weight']:.3f} | {p['weight_bytes'] / 2**20:.1f} | {ppl:.3f} | "
                   f"{p['ratios']['ppl_builtin']:.3f} | {change} | {p['stage_seconds']:.0f} | {'yes' if res['best'] == name else ''} |")
            if extra:
                row += f" {score(p['path'], extra):.3f} |"
            lines.append(row)
            prev = ppl
    orig = res["original"]["metrics"]["ppl_builtin"]
    print(f"original PPL (builtin held-out): {orig:.3f}" + (f"; on {extra}: {orig_extra:.3f}" if extra else "") + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
