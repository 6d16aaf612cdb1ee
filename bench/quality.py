"""RTN vs GPTQ on the built-in model: PPL, bits per weight, size and time.

    .venv/bin/python bench/quality.py [--bits 2,3,4,8] [--methods rtn,gptq] [--out bench-out]

Each setting is a full `onecomp compress` job (default calibration 128 x 512,
built-in held-out evaluation); finished jobs in --out are reused, so the table
can be rebuilt without recomputing. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(model: str, method: str, bits: int, group: int, out: Path) -> dict:
    """One job in its own process, so its time and peak memory are its own."""
    job_dir = out / f"{method}-w{bits}g{group}"
    results = job_dir / "eval" / "results.json"
    state = job_dir / "state.json"
    if not (results.is_file() and json.loads(state.read_text()).get("complete")):
        cmd = [sys.executable, "-m", "onecomp.cli", "compress", model, "--method", method, "--bits", str(bits),
               "--group-size", str(group), "--output", str(job_dir), "--overwrite"]
        subprocess.run(cmd, check=True)
    return json.loads(results.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", default="2,3,4,8")
    ap.add_argument("--methods", default="rtn,gptq")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    rows = []
    for bits in [int(b) for b in args.bits.split(",")]:
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            res = run(args.model, method, bits, args.group_size, args.out)
            pivot = res["pivots"]["1-layerwise"]
            rows.append(
                {
                    "method": method,
                    "format": f"w{bits} g{args.group_size}",
                    "bpw": pivot["bits_per_weight"],
                    "MiB": pivot["weight_bytes"] / 2**20,
                    "ppl": pivot["metrics"]["ppl_builtin"],
                    "ratio": pivot["ratios"]["ppl_builtin"],
                    "stage_s": pivot["stage_seconds"],
                    "peak_GiB": res["peak_rss_bytes"] / 2**30,
                    "wall_s": time.perf_counter() - t0,
                }
            )
            orig = res["original"]["metrics"]["ppl_builtin"]
    print(f"original PPL (builtin held-out): {orig:.3f}\n")
    print("| method | format | bits/weight | weights MiB | PPL | x original | layer-wise s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['format']} | {r['bpw']:.3f} | {r['MiB']:.1f} | {r['ppl']:.3f} | {r['ratio']:.3f} | {r['stage_s']:.0f} | {r['peak_GiB']:.2f} |")


if __name__ == "__main__":
    main()
