"""Loss-gradient row weighting of the binary factorizations, layer by layer.

For real SmolLM2 layers: the loss-weighted error 1/2 sum_q E[g_q^2] (D S D^T)_qq
(g: the next-token loss gradient at the layer's outputs over 32 x 256 built-in
calibration tokens, S from the original model's inputs to the layer) and the
relative output error, for GPTQ w2 g128 and for DBF/MDBF at 2.0 bits per weight
fitted unweighted and with rows weighted by E[g^2]^x.

    .venv/bin/python bench/row_weighting_layers.py [--blocks 3] [--exponents 0.5,1]
"""

from __future__ import annotations

import argparse

import torch
import transformers

from onecomp.data.calibration import build_calibration
from onecomp.formats import format_from_label
from onecomp.methods import METHODS
from onecomp.models.adapters import adapter_for
from onecomp.models.resolve import resolve_model
from onecomp.plan.fisher import output_grad_moments
from onecomp.plan.measure import candidate_errors

from sign_factor_layers import NAMES, layer_hessians  # noqa: E402  (bench/ sibling)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--blocks", default="3")
    ap.add_argument("--layers", default="q_proj,o_proj,gate_proj,down_proj")
    ap.add_argument("--exponents", default="0.5,1")
    args = ap.parse_args()
    model_dir = str(resolve_model(args.model).path)
    blocks = [int(b) for b in args.blocks.split(",")]
    layers = args.layers.split(",")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = build_calibration(transformers.AutoTokenizer.from_pretrained(model_dir), "builtin", 32, 256, 0).input_ids
    names = [f"model.layers.{b}.{NAMES[n]}" for b in blocks for n in layers]
    grad_sq, _ = output_grad_moments(model, adapter_for("llama"), names, ids, 8, torch.device("cpu"))
    del model
    print("| block | layer | variant | loss-weighted error | relative output error |")
    print("|---|---|---|---|---|")
    for b in blocks:
        data = layer_hessians(model_dir, b, layers, 32, 256)
        for n in layers:
            w, h = data[n]
            g = grad_sq[f"model.layers.{b}.{NAMES[n]}"]
            gptq = METHODS["gptq"]
            rows = [("GPTQ w2 g128", gptq.quantize(w, h, format_from_label("w2g128"), gptq.options())[0].dequantize())]
            for name in ("dbf", "mdbf"):
                method = METHODS[name]
                for x in [0.0, *(float(e) for e in args.exponents.split(","))]:
                    opts = method.options(output_weighting=x)
                    fmt = method.format_for(2.0, 128, False, opts)
                    ((result, _),) = method.quantize_weighted(w, h, [fmt], opts, g)
                    rows.append((f"{name.upper()}, rows weighted E[g^2]^{x:g}" if x else f"{name.upper()}, unweighted", result.dequantize()))
            for (label, _), (weighted, relative) in zip(rows, candidate_errors(w, [d for _, d in rows], 2 * h, g)):
                print(f"| {b} | {n} | {label} | {weighted:.4g} | {relative:.4f} |", flush=True)


if __name__ == "__main__":
    main()
