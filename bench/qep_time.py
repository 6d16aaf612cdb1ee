"""Time of the layer-wise stage with and without QEP, on the first blocks of the
built-in model, in one process with nothing else running (the full jobs of
bench/quality.py may share the cores, so their times are not comparable).

    .venv/bin/python bench/qep_time.py [--blocks 6] [--bits 3] [--group-size 128]

Calibration as in a job (built-in text, 128 x 512, bfloat16 forwards). Every
block has the same shapes, so the time per block of a prefix is the time per
block of the whole stage. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

from onecomp.data import build_calibration
from onecomp.formats import IntFormat
from onecomp.methods import get_method
from onecomp.models.adapters import adapter_for
from onecomp.models.resolve import resolve_model
from onecomp.runtime.skeleton import StreamedModel
from onecomp.stages.layerwise import run_layerwise
from onecomp.stages.qep import QEPSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    args = ap.parse_args()
    path = resolve_model(args.model).path
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ids = build_calibration(tokenizer, "builtin", args.nsamples, args.seqlen).input_ids
    method = get_method("gptq")
    rows = []
    for name, qep in (("gptq", None), ("gptq+qep", QEPSettings()), ("gptq+qep+residual", QEPSettings(residual=True))):
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        adapter = adapter_for(model.config.model_type)
        del adapter.blocks(model)[args.blocks :]
        model.config.num_hidden_layers = args.blocks
        fmt = IntFormat(bits=args.bits, group_size=args.group_size)
        plan = {f"{adapter.block_prefix(i)}.{n}": fmt for i in range(args.blocks) for n in adapter.linear_names()}
        t0 = time.perf_counter()
        run_layerwise(StreamedModel.from_model(model, torch.device("cpu"), torch.bfloat16), adapter, plan, method, method.options(), ids, 8, qep=qep)
        rows.append((name, (time.perf_counter() - t0) / args.blocks))
    base = rows[0][1]
    print(f"| variant | s per block ({args.blocks} blocks, w{args.bits} g{args.group_size}, {args.nsamples} x {args.seqlen}) | x gptq |")
    print("|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.1f} | {sec / base:.2f} |")


if __name__ == "__main__":
    main()
