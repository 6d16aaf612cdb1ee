"""Peak memory and time of the layer-wise stage at Llama-3-8B's width, on
random weights (good for memory and time, meaningless for quality).

    .venv/bin/python bench/scale.py --blocks 8 32 [--out bench-out/scale]

For each depth, writes a model with Llama-3-8B's shapes (hidden 4096, MLP
14336, 32 heads with 8 KV heads, vocabulary 128256, untied head) as random
bfloat16 weights in 5 GB shards with SmolLM2's tokenizer (its ids fit the
vocabulary), then runs `onecomp compress` on it (GPTQ + QEP w4 g128, the
default method, 16 x 512 calibration, no evaluation) under `/usr/bin/time -v`
and prints one markdown row per depth: peak RSS, the stage's time, time per
block, and the job's own estimate of its peak. Models and jobs are kept in
--out; an existing model is reused.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import torch
import transformers

from onecomp.models.resolve import resolve_model
from onecomp.runtime.skeleton import empty_model
from onecomp.runtime.writer import PendingTensor, write_sharded

LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
    tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
    bos_token_id=1, eos_token_id=2,
)


def write_model(path: Path, blocks: int, seed: int = 0) -> Path:
    """Random weights of the shapes above, written tensor by tensor (memory: one tensor)."""
    if (path / "config.json").is_file():
        return path
    config = transformers.AutoConfig.for_model("llama", num_hidden_layers=blocks, **LLAMA3_8B)
    config.dtype = torch.bfloat16
    skeleton = empty_model(config)
    gen = torch.Generator().manual_seed(seed)

    def produce(shape: tuple[int, ...], is_norm: bool):
        def make() -> torch.Tensor:
            if is_norm:
                return torch.ones(shape, dtype=torch.bfloat16)
            return (torch.randn(shape, generator=gen) * (1.0 / math.sqrt(shape[-1]))).to(torch.bfloat16)
        return make

    pending = [
        PendingTensor(name, torch.bfloat16, tuple(t.shape), produce(tuple(t.shape), t.dim() == 1))
        for name, t in skeleton.state_dict().items()
    ]
    tmp = path.with_name(path.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    write_sharded(tmp, pending, 5 * 10**9, {"format": "pt"})
    config.save_pretrained(tmp)
    transformers.AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path).save_pretrained(tmp)
    tmp.rename(path)
    return path


def run_job(model: Path, out: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "onecomp.cli", "compress", str(model), "--bits", "4",
           "--group-size", "128", "--nsamples", "16", "--seqlen", "512", "--eval", "none", "--output", str(out), "--overwrite"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"job failed: {proc.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    results = json.loads((out / "eval" / "results.json").read_text())
    inspect = json.loads((out / "inspect.json").read_text())
    return {
        "peak": peak_kb * 1024,
        "stage_seconds": results["pivots"]["1-layerwise"]["stage_seconds"],
        "total_seconds": results["total_seconds"],
        "estimate": inspect["estimate"]["host_peak_bytes"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--out", type=Path, default=Path("bench-out/scale"))
    args = ap.parse_args()
    rows = []
    for blocks in args.blocks:
        model = write_model(args.out / f"llama3-8b-shapes-{blocks}", blocks)
        got = run_job(model, args.out / f"job-{blocks}")
        rows.append((blocks, got))
        print(f"{blocks} blocks: {got}", file=sys.stderr, flush=True)
    gib = 2**30
    print("| blocks | peak RSS | estimate | layer-wise stage | per block | job |")
    print("|---|---|---|---|---|---|")
    for blocks, g in rows:
        print(f"| {blocks} | {g['peak'] / gib:.2f} GiB | {g['estimate'] / gib:.2f} GiB | {g['stage_seconds']:.0f} s | "
              f"{g['stage_seconds'] / blocks:.0f} s | {g['total_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
