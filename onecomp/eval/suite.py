"""One evaluation suite for the original model and every pivot: the perplexity
texts and the lm-eval tasks of ``EvalConfig``, scored the same way each time.

The original's scores are cached one metric at a time, keyed by the model's
content and that metric's protocol, so adding a task to a job does not
recompute the perplexities, and a second job on the same model recomputes
nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onecomp.data import eval_windows
from onecomp.data.evaltext import selection_windows
from onecomp.estimate import F32, JobShape, Peak
from onecomp.eval.lm_tasks import check_tasks, run_tasks
from onecomp.eval.perplexity import perplexity
from onecomp.fingerprint import hash_json, model_fingerprint
from onecomp.io import atomic_write_json
from onecomp.paths import cache_dir
from onecomp.reporter import Reporter
from onecomp.runtime.memory import release_freed_memory

REFERENCE_VERSION = 2
# Tokens an lm-eval batch of the built-in tasks is padded to, for the memory
# estimate: their longest requests (context and continuation) are about 90
# tokens with SmolLM2's tokenizer; standard tasks with longer contexts need more.
TASK_TOKENS = 128


def _buffers(shape: JobShape) -> int:
    """An evaluation's buffers: for perplexity the decoder's activations for a
    batch of windows and one window's logits and log-softmax (the head runs one
    window at a time); for tasks, lm-eval's logits and log-softmax for a whole
    batch of requests."""
    e, vocab = shape.config.eval, shape.profile.vocab_size
    ppl = shape.forward_buffers(e.batch_size, e.seqlen) + 2 * e.seqlen * vocab * F32 if e.ppl else 0
    tasks = shape.forward_buffers(e.task_batch_size, TASK_TOKENS) + 2 * e.task_batch_size * TASK_TOKENS * vocab * F32 if e.tasks else 0
    return max(ppl, tasks)


def estimate_reference(shape: JobShape) -> Peak:
    """Scoring the original: its float32 weights (on a GPU, loaded on the host first) and the buffers."""
    if shape.on_gpu:
        return Peak(host=shape.weights32, device=shape.weights32 + _buffers(shape))
    return Peak(host=shape.weights32 + _buffers(shape))


def estimate_pivot(shape: JobShape) -> Peak:
    """Scoring a pivot as ``load`` builds it (packed codes, float32 embedding and head) and the buffers."""
    if shape.on_gpu:
        return Peak(host=shape.pivot_model, device=shape.pivot_model + _buffers(shape))
    return Peak(host=shape.pivot_model + _buffers(shape))


@dataclass
class Scores:
    """``metrics``: ``ppl_<text>``, ``acc_<task>``, ``acc_norm_<task>``; ``protocol``: {"ppl": {text: ..}, "tasks": {task: ..}}."""

    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    protocol: dict[str, dict[str, Any]] = field(default_factory=lambda: {"ppl": {}, "tasks": {}})

    def merge(self, other: "Scores") -> None:
        self.metrics.update(other.metrics)
        self.stderr.update(other.stderr)
        for kind, entries in other.protocol.items():
            self.protocol.setdefault(kind, {}).update(entries)

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "stderr": self.stderr, "protocol": self.protocol}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Scores":
        return cls(dict(data["metrics"]), dict(data.get("stderr", {})), {k: dict(v) for k, v in data["protocol"].items()})


def score_ppl(model: torch.nn.Module, tokenizer: Any, spec: str, eval_cfg: Any, device: torch.device, reporter: Reporter, label: str) -> Scores:
    windows = eval_windows(tokenizer, spec, eval_cfg.seqlen, eval_cfg.max_windows)
    with reporter.task(f"perplexity of {label} on {spec}", windows.input_ids.shape[0]) as task:
        res = perplexity(model, windows.input_ids, eval_cfg.batch_size, device, on_batch=task.advance)
    record = {**windows.record, "scored_tokens": res["tokens"], "dtype": "float32"}
    return Scores({f"ppl_{spec}": res["ppl"]}, {}, {"ppl": {spec: record}, "tasks": {}})


def score_selection(model: torch.nn.Module, tokenizer: Any, batch_size: int, device: torch.device, reporter: Reporter, label: str) -> tuple[float, dict[str, Any]]:
    """Perplexity on the built-in selection split: what picks the best pivot, never what is reported."""
    windows = selection_windows(tokenizer)
    with reporter.task(f"selection perplexity of {label}", windows.input_ids.shape[0]) as task:
        res = perplexity(model, windows.input_ids, batch_size, device, on_batch=task.advance)
    return res["ppl"], {**windows.record, "scored_tokens": res["tokens"], "dtype": "float32"}


def score_tasks(model: torch.nn.Module, tokenizer: Any, names: list[str], eval_cfg: Any, device: torch.device, reporter: Reporter, label: str) -> Scores:
    metrics, stderr, protocol = run_tasks(model, tokenizer, names, eval_cfg.limit, eval_cfg.task_batch_size, device, reporter, label)
    return Scores(metrics, stderr, {"ppl": {}, "tasks": protocol})


def evaluate(model: torch.nn.Module, tokenizer: Any, eval_cfg: Any, device: torch.device, reporter: Reporter, label: str) -> Scores:
    """Every metric of the suite on one in-memory model."""
    scores = Scores()
    for spec in eval_cfg.ppl:
        scores.merge(score_ppl(model, tokenizer, spec, eval_cfg, device, reporter, label))
        release_freed_memory()  # each metric's buffers go back before the next one's arrive
    if eval_cfg.tasks:
        scores.merge(score_tasks(model, tokenizer, list(eval_cfg.tasks), eval_cfg, device, reporter, label))
        release_freed_memory()
    return scores


def _cache_file(model_fp: str, item: dict[str, Any]) -> Path:
    key = hash_json({"model": model_fp, "item": item, "v": REFERENCE_VERSION})
    return cache_dir() / "reference" / f"{key}.json"


def reference_scores(model_path: Path, tokenizer: Any, eval_cfg: Any, device: torch.device, reporter: Reporter, spec: str) -> Scores:
    """The original model's scores, each metric cached on its own (batching never changes a score)."""
    items = [("ppl", s, {"ppl": s, "seqlen": eval_cfg.seqlen, "max_windows": eval_cfg.max_windows}) for s in eval_cfg.ppl]
    data = check_tasks(list(eval_cfg.tasks)) if eval_cfg.tasks else {}  # a built-in task's items, by hash
    lm_eval_version = importlib.metadata.version("lm_eval")
    items += [("task", t, {"task": t, "limit": eval_cfg.limit, "data": data.get(t, f"lm-eval {lm_eval_version}")}) for t in eval_cfg.tasks]
    model_fp = model_fingerprint(model_path)
    scores, missing = Scores(), []
    for kind, name, item in items:
        f = _cache_file(model_fp, item)
        if f.is_file():
            scores.merge(Scores.from_json(json.loads(f.read_text())))
        else:
            missing.append((kind, name, item))
    if not missing:
        return scores
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True).to(device).eval()
    label = "the original model"
    for kind, name, item in missing:
        if kind == "ppl":
            got = score_ppl(model, tokenizer, name, eval_cfg, device, reporter, label)
        else:
            got = score_tasks(model, tokenizer, [name], eval_cfg, device, reporter, label)
        atomic_write_json(_cache_file(model_fp, item), {**got.to_json(), "model": spec})
        scores.merge(got)
        release_freed_memory()
    del model
    release_freed_memory()  # the float32 original's pages go back before the stages start
    return scores
