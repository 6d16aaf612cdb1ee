"""The layer-wise and block-wise stages' peak memory does not grow with depth:
a model with 12 blocks peaks where the same model with 2 blocks does, although
its weights take several times the bytes on disk. A design that holds the
whole model (or the block-wise teacher), even in its stored dtype, grows by at
least those bytes and fails this."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from onecomp.models.weights import weight_files


def _model(path: Path, blocks: int, tok_dir: Path) -> Path:
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    config = transformers.AutoConfig.for_model(
        "llama", hidden_size=512, intermediate_size=2048, num_hidden_layers=blocks, num_attention_heads=8,
        num_key_value_heads=2, vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _peak_rss(model: Path, out: Path, stages: str) -> int:
    """Peak resident bytes of a whole `onecomp compress` process (these stages, no evaluation)."""
    cmd = [sys.executable, "-m", "onecomp.cli", "compress", str(model), "--bits", "4", "--group-size", "128",
           "--nsamples", "8", "--seqlen", "64", "--eval", "none", "--stages", stages, "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    output = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output[-2000:]
    return usage.ru_maxrss * 1024  # kilobytes on Linux


@pytest.mark.real
def test_peak_memory_does_not_grow_with_depth(tmp_path, tiny_smollm_dir) -> None:
    """Both stages in one job: the peak is the larger of theirs, so either one growing fails this."""
    stages = "layerwise,blockwise"
    shallow = _model(tmp_path / "m2", 2, tiny_smollm_dir)
    deep = _model(tmp_path / "m12", 12, tiny_smollm_dir)
    disk = [sum(f.stat().st_size for f in weight_files(m)) for m in (shallow, deep)]
    peaks = [_peak_rss(m, tmp_path / f"out-{m.name}", stages) for m in (shallow, deep)]
    extra_weights = disk[1] - disk[0]
    assert extra_weights > 60 * 2**20  # ten blocks of this width: a growth the measurement sees
    growth = peaks[1] - peaks[0]
    assert growth < 0.5 * extra_weights, f"peak grew by {growth / 2**20:.0f} MiB for {extra_weights / 2**20:.0f} MiB more weights"
