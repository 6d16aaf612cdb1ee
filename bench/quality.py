"""Layer-wise quality side by side on the built-in model: PPL, bits per weight,
time and peak memory, per method variant and format.

    .venv/bin/python bench/quality.py [--formats w4g128,w3g128,w2g128,w4ch,2.0bpw]
        [--variants rtn,gptq,gptq+qep] [--eval-text pydoc] [--out bench-out/quality]

A format is ``w<bits>g<group>`` or ``w<bits>ch`` (integer methods; lords reads
``w<bits>g<block>``), or ``<rate>bpw`` for dbf and mdbf (``2.0bpw``).
A variant is a method name with ``+`` options: ``+qep`` turns QEP on (it is off
otherwise, so ``gptq`` is plain GPTQ), ``+key=value`` sets a ``quant.qep`` field
(``+alpha=1.0``, ``+damp=1.0``, ``+residual=true``), ``+true_sequential=false``,
``+sym=true``, or a method option (``+mse=false``, ``+act_order=false``). A dotted
key names its section: ``+qep.damp=1.0`` or ``+options.damp=0.1`` (GPTQ's own
damping, which a bare ``damp`` does not reach). Each cell
is a full `onecomp compress` job in its own process (default calibration
128 x 512, built-in held-out evaluation), so its time and peak memory are its
own; finished jobs in --out are reused. ``--eval-text`` also scores each pivot
on another text with `onecomp eval`. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

_FORMAT = re.compile(r"^w(\d+)(?:g(\d+)|ch)$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)bpw$")
_QEP_KEYS = {"alpha", "damp", "residual"}
_QUANT_KEYS = {"true_sequential", "sym"}


def _value(text: str):
    return yaml.safe_load(text)


def variant_config(variant: str) -> dict:
    """The ``quant`` section of a job YAML for a variant like ``gptq+qep+alpha=1.0``."""
    method, *extras = variant.split("+")
    quant: dict = {"method": method, "qep": {"enabled": False}, "options": {}}
    for extra in extras:
        if extra == "qep":
            quant["qep"]["enabled"] = True
        elif "=" in extra:
            key, val = extra.split("=", 1)
            if "." in key:
                where, key = key.split(".", 1)
                if where not in ("qep", "options"):
                    raise SystemExit(f"unknown section {where!r} in {variant!r}: use qep. or options.")
                section = quant[where]
            else:
                section = quant["qep"] if key in _QEP_KEYS else quant if key in _QUANT_KEYS else quant["options"]
            section[key] = _value(val)
        else:
            raise SystemExit(f"unknown variant part {extra!r} in {variant!r}")
    return quant


def run(model: str, variant: str, fmt: str, out: Path) -> tuple[Path, dict]:
    m, rate = _FORMAT.match(fmt), _RATE.match(fmt)
    if m is not None:
        bits, group = int(m.group(1)), int(m.group(2) or -1)
    elif rate is not None:  # binary factorizations: a rate in bits per weight
        bits, group = float(rate.group(1)), 128
    else:
        raise SystemExit(f"format {fmt!r}: use w<bits>g<group>, w<bits>ch or <rate>bpw (dbf, mdbf)")
    job_dir = out / f"{variant}-{fmt}"
    results, state = job_dir / "eval" / "results.json", job_dir / "state.json"
    if not (results.is_file() and json.loads(state.read_text()).get("complete")):
        job_dir.mkdir(parents=True, exist_ok=True)
        quant = {**variant_config(variant), "bits": bits, "group_size": group}
        config = job_dir.parent / f"{job_dir.name}.yaml"
        config.write_text(yaml.safe_dump({"model": model, "output": str(job_dir), "quant": quant, "eval": {"tasks": []}}))
        cmd = [sys.executable, "-m", "onecomp.cli", "compress", "--config", str(config), "--overwrite"]
        subprocess.run(cmd, check=True)
    return job_dir, json.loads(results.read_text())


def other_text(job_dir: Path, text: str, windows: int) -> float:
    """PPL of the layer-wise pivot on ``text`` (cached next to the job)."""
    cache = job_dir / "eval" / f"ppl-{text}-{windows}.json"
    if not cache.is_file():
        cmd = [sys.executable, "-m", "onecomp.cli", "eval", str(job_dir / "pivots" / "1-layerwise"), "--ppl", text, "--max-windows", str(windows)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        cache.write_text(res.stdout[res.stdout.index("{"):])
    return float(json.loads(cache.read_text())["metrics"][f"ppl_{text}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--formats", default="w4g128,w3g128,w2g128,w4ch")
    ap.add_argument("--variants", default="rtn,gptq,gptq+qep")
    ap.add_argument("--eval-text", default=None, help="also score each pivot on this text (e.g. pydoc)")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("bench-out/quality"))
    args = ap.parse_args()
    rows, orig = [], None
    for fmt in args.formats.split(","):
        for variant in args.variants.split(","):
            job_dir, res = run(args.model, variant, fmt, args.out)
            pivot = res["pivots"]["1-layerwise"]
            orig = res["original"]["metrics"]["ppl_builtin"]
            rows.append(
                {
                    "variant": variant,
                    "format": fmt,
                    "bpw": pivot["bits_per_weight"],
                    "ppl": pivot["metrics"]["ppl_builtin"],
                    "ratio": pivot["ratios"]["ppl_builtin"],
                    "other": other_text(job_dir, args.eval_text, args.eval_windows) if args.eval_text else None,
                    "stage_s": pivot["stage_seconds"],
                    "peak_GiB": res["peak_rss_bytes"] / 2**30,
                    "estimate_GiB": res.get("estimate_host_peak_bytes", 0) / 2**30,
                }
            )
    other = f" | PPL {args.eval_text}" if args.eval_text else ""
    print(f"original PPL (builtin held-out): {orig:.3f}\n")
    print(f"| format | variant | bits/weight | PPL | x original{other} | layer-wise s | peak RSS GiB |")
    print("|---|---|---|---|---|" + ("---|" if other else "") + "---|---|")
    for r in rows:
        extra = f" | {r['other']:.2f}" if other else ""
        print(f"| {r['format']} | {r['variant']} | {r['bpw']:.3f} | {r['ppl']:.3f} | {r['ratio']:.3f}{extra} | {r['stage_s']:.0f} | {r['peak_GiB']:.2f} |")


if __name__ == "__main__":
    main()
