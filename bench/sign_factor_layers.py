"""Layer-level comparison of binary factorizations against integer formats at
about 2 bits per weight: relative output error tr(E H Eᵀ)/tr(W H Wᵀ) on real
SmolLM2 layers, H from the full-precision model's own inputs to each layer on
built-in calibration text, and the fit time. With ``--score-text`` the same
fits are also scored under an H from other text (``pydoc``, or ``builtin`` with
another ``--score-seed``): a fit that gains only under the H it was fitted to
has learnt its calibration sample, not the layer.

    .venv/bin/python bench/sign_factor_layers.py [--block 3] [--layers q_proj,gate_proj,down_proj]
        [--variants rtn-w2g128,gptq-w2g128,dbf,dbf+sign_rounds=0,mdbf,mdbf+paths=2]
        [--score-text pydoc] [--score-seed 0]

A variant is ``<method>-<format label>`` (``gptq-w2g128``, ``lords-lords3g128``), or
``dbf`` / ``mdbf`` with ``+key=value`` method options (``iterations``,
``sign_rounds``, ``weighting``, ``envelope``, ``paths``, ...) at ``--bpw``.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers
import yaml

from onecomp.algorithms.gptq import relative_output_error
from onecomp.data.calibration import build_calibration
from onecomp.formats import format_from_label
from onecomp.methods import METHODS
from onecomp.models.resolve import resolve_model

NAMES = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
}


def layer_hessians(
    model: torch.nn.Module, ids: torch.Tensor, block: int, layers: list[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(weight, H) of each layer, H = XᵀX/N over the original model's inputs to it."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(_mod, args, _out):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        return fn

    mods = {n: model.get_submodule(f"model.layers.{block}.{NAMES[n]}") for n in layers}
    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    with torch.no_grad():
        for i in range(0, len(ids), 8):
            model(ids[i : i + 8])
    for h in handles:
        h.remove()
    return {n: (mods[n].weight.detach().float().clone(), sums[n] / counts[n]) for n in layers}


def quantize(variant: str, weight: torch.Tensor, hessian: torch.Tensor, bpw: float) -> tuple[torch.Tensor, float]:
    """Dequantized weight and bits per weight of one variant."""
    name, _, rest = variant.partition("-") if "-" in variant else (variant.split("+")[0], "", "")
    method = METHODS[name]
    if rest:
        fmt, opts = format_from_label(rest), method.options()
    else:
        extras = dict(part.split("=", 1) for part in variant.split("+")[1:])
        opts = method.options.model_validate({k: yaml.safe_load(v) for k, v in extras.items()})
        fmt = method.format_for(bpw, 128, False, opts)
    result, spec = method.quantize(weight, hessian, fmt, opts)
    return result.dequantize(), spec.bits_per_weight(*weight.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--block", type=int, default=3)
    ap.add_argument("--layers", default="q_proj,gate_proj,down_proj")
    ap.add_argument("--variants", default="rtn-w2g128,gptq-w2g128,dbf+sign_rounds=0,dbf,mdbf+paths=2,mdbf,mdbf+envelope=2+paths=1")
    ap.add_argument("--bpw", type=float, default=2.0)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--score-text", default=None, help="also score each fit under an H from this text's calib split")
    ap.add_argument("--score-seed", type=int, default=0, help="shuffle seed of the scoring text (1+ for other built-in samples)")
    args = ap.parse_args()
    layers = args.layers.split(",")
    model_dir = str(resolve_model(args.model).path)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    data = layer_hessians(model, build_calibration(tok, "builtin", args.nsamples, args.seqlen, 0).input_ids, args.block, layers)
    scoring = None
    if args.score_text:
        ids = build_calibration(tok, args.score_text, args.nsamples, args.seqlen, args.score_seed).input_ids
        scoring = layer_hessians(model, ids, args.block, layers)
    print(f"block {args.block}, H from {args.nsamples} x {args.seqlen} built-in calibration tokens", end="")
    print(f"; scored also under H from {args.score_text} (seed {args.score_seed})\n" if scoring else "\n")
    extra = " output error, scoring H |" if scoring else ""
    print(f"| layer | shape | variant | bits/weight | output error |{extra} seconds |")
    print("|---|---|---|---|---|" + ("---|" if scoring else "") + "---|")
    for layer in layers:
        w, h = data[layer]
        for variant in args.variants.split(","):
            t0 = time.perf_counter()
            deq, bits = quantize(variant, w, h, args.bpw)
            seconds = time.perf_counter() - t0
            err = relative_output_error(w, deq, h)
            other = f" {relative_output_error(w, deq, scoring[layer][1]):.4f} |" if scoring else ""
            print(f"| {layer} | {w.shape[0]}x{w.shape[1]} | {variant} | {bits:.3f} | {err:.4f} |{other} {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
