"""Can the planner measure LoRDS on a sample of a layer's output channels?

LoRDS is not row-separable: its scale B @ A shares the r x in factor A across
rows. But r is tiny (2-3 on SmolLM2 at the g128 budget), so A fitted on a
stratified sample of rows (the planner's ``sample_rows``) should be close to the
one fitted on all rows. This prints, per layer, the full fit's relative output
error, the sampled estimate, and both times.

    .venv/bin/python bench/lords_row_sampling.py [--blocks 3,20] [--label lords3g128nf] [--fraction 0.125]
"""

from __future__ import annotations

import argparse
import time

import torch

from onecomp.formats import format_from_label
from onecomp.methods import METHODS
from onecomp.models.resolve import resolve_model
from onecomp.plan.measure import sample_rows

from sign_factor_layers import layer_hessians  # noqa: E402  (bench/ sibling)


def row_errors(w: torch.Tensor, deq: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    d = w - deq
    return ((d @ h) * d).sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--blocks", default="3,20")
    ap.add_argument("--layers", default="q_proj,k_proj,o_proj,gate_proj,down_proj")
    ap.add_argument("--label", default="lords3g128nf")
    ap.add_argument("--fraction", type=float, default=0.125)
    ap.add_argument("--iterations", type=int, default=8)
    args = ap.parse_args()
    method = METHODS["lords"]
    opts = method.options(iterations=args.iterations)
    measuring = method.options_for_measuring(opts)
    fmt = format_from_label(args.label)
    layers = args.layers.split(",")
    model_dir = str(resolve_model(args.model).path)
    print(f"{args.label}, full fit {opts.iterations} rounds, sampled {measuring.iterations} rounds, rows sampled: {args.fraction} (at least 128, 16 heaviest always)\n")
    print("| block | layer | shape | rank | full error | sampled estimate | ratio | full s | sampled s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for block in [int(b) for b in args.blocks.split(",")]:
        data = layer_hessians(model_dir, block, layers, 32, 256)
        for layer in layers:
            w, h = data[layer]
            spec = fmt.resolved(*w.shape)
            base = float(((w @ h) * w).sum())
            t0 = time.perf_counter()
            res, _ = method.quantize(w, h, spec, opts)
            full = float(row_errors(w, res.dequantize(), h).sum()) / base
            t1 = time.perf_counter()
            importance = ((w @ h) * w).sum(1)
            rows, weights = sample_rows(importance, args.fraction, 128, 16, block)
            res_s, _ = method.quantize(w[rows], h, spec, measuring)
            est = float((row_errors(w[rows], res_s.dequantize(), h) * weights).sum()) / base
            t2 = time.perf_counter()
            print(f"| {block} | {layer} | {w.shape[0]}x{w.shape[1]} | {spec.rank} | {full:.4f} | {est:.4f} | {est / full:.3f} | {t1 - t0:.1f} | {t2 - t1:.1f} |", flush=True)


if __name__ == "__main__":
    main()
