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
from onecomp.eval.builtin_tasks import CHOICES, ITEMS
from onecomp.estimate import F32, JobShape, Peak
from onecomp.eval.lm_tasks import check_tasks, hf_lm, quiet_lm_eval, run_tasks
from onecomp.eval.perplexity import perplexity, streamed_perplexity
from onecomp.eval.streamed_lm import HIDDEN_BUDGET_BYTES, streamed_lm
from onecomp.fingerprint import hash_json, model_fingerprint
from onecomp.io import atomic_write_json
from onecomp.models.adapters import adapter_for
from onecomp.paths import cache_dir
from onecomp.reporter import Reporter
from onecomp.runtime.memory import release_freed_memory
from onecomp.runtime.skeleton import StreamedModel

REFERENCE_VERSION = 2
# Tokens an lm-eval batch of the built-in tasks is padded to, for the memory
# estimate: their longest requests (context and continuation) are about 90
# tokens with SmolLM2's tokenizer; standard tasks with longer contexts need more.
TASK_TOKENS = 128


# Windows assumed for a text scored whole (``max_windows: null``): the estimate
# cannot know its length; the built-in texts hold fewer.
_ALL_WINDOWS = 256


def _ppl_buffers(shape: JobShape) -> int:
    """Perplexity's buffers beside a whole model: the decoder's activations for a
    batch of windows and one window's logits and log-softmax (the head runs one
    window at a time)."""
    e = shape.config.eval
    return shape.forward_buffers(e.batch_size, e.seqlen) + 2 * e.seqlen * shape.profile.vocab_size * F32 if e.ppl else 0


def _task_buffers(shape: JobShape) -> int:
    """lm-eval's logits and log-softmax for a whole batch of requests."""
    e = shape.config.eval
    return shape.forward_buffers(e.task_batch_size, TASK_TOKENS) + 2 * e.task_batch_size * TASK_TOKENS * shape.profile.vocab_size * F32 if e.tasks else 0


def _task_hidden(shape: JobShape) -> int:
    """Hidden states of a task's requests, held while they pass the blocks:
    the built-in tasks' items (or the limit) times their choices, at most the
    streamed scorer's budget (standard tasks are assumed no larger)."""
    e, hidden = shape.config.eval, shape.profile.hidden_size
    requests = (e.limit or ITEMS) * CHOICES
    return min(HIDDEN_BUDGET_BYTES, requests * TASK_TOKENS * hidden * F32)


def estimate_reference(shape: JobShape) -> Peak:
    """Scoring the original, streamed block by block: perplexity (every
    window's hidden states, then the largest of the embedding, one float32
    block with a batch's activations, and the head with one window's logits)
    and the lm-eval tasks (their requests' hidden states, one float32 block
    with a batch's activations, and the head)."""
    p, e = shape.profile, shape.config.eval
    block = shape.block32
    head = p.vocab_size * p.hidden_size * F32
    hidden = (e.max_windows or _ALL_WINDOWS) * e.seqlen * p.hidden_size * F32 if e.ppl else 0
    work = max(head, block + shape.forward_buffers(e.batch_size, e.seqlen), head + 2 * e.seqlen * p.vocab_size * F32) if e.ppl else 0
    task_hidden = _task_hidden(shape) if e.tasks else 0
    task_work = max(head, block + shape.forward_buffers(e.task_batch_size, TASK_TOKENS)) if e.tasks else 0
    if shape.on_gpu:
        return Peak(host=max(hidden, task_hidden), device=max(work, task_work))
    return Peak(host=max(hidden + work, task_hidden + task_work))


def estimate_pivot(shape: JobShape) -> Peak:
    """Scoring a pivot as ``load`` builds it (packed codes, float32 embedding and head) and the buffers."""
    buffers = max(_ppl_buffers(shape), _task_buffers(shape))
    if shape.on_gpu:
        return Peak(host=shape.pivot_model, device=shape.pivot_model + buffers)
    return Peak(host=shape.pivot_model + buffers)


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


def score_streamed_ppl(model_path: Path, tokenizer: Any, spec: str, eval_cfg: Any, device: torch.device, reporter: Reporter, label: str) -> Scores:
    """:func:`score_ppl` of a model read block by block from its files (the same number, one block in memory)."""
    windows = eval_windows(tokenizer, spec, eval_cfg.seqlen, eval_cfg.max_windows)
    model = StreamedModel.open(model_path, device, torch.float32)
    adapter = adapter_for(model.model.config.model_type)
    with reporter.task(f"perplexity of {label} on {spec}", len(adapter.blocks(model.model))) as task:  # counts blocks
        res = streamed_perplexity(model, adapter, windows.input_ids, eval_cfg.batch_size, on_block=task.advance)
    record = {**windows.record, "scored_tokens": res["tokens"], "dtype": "float32"}
    return Scores({f"ppl_{spec}": res["ppl"]}, {}, {"ppl": {spec: record}, "tasks": {}})


def score_selection(model: torch.nn.Module, tokenizer: Any, batch_size: int, device: torch.device, reporter: Reporter, label: str) -> tuple[float, dict[str, Any]]:
    """Perplexity on the built-in selection split: what picks the best pivot, never what is reported."""
    windows = selection_windows(tokenizer)
    with reporter.task(f"selection perplexity of {label}", windows.input_ids.shape[0]) as task:
        res = perplexity(model, windows.input_ids, batch_size, device, on_batch=task.advance)
    return res["ppl"], {**windows.record, "scored_tokens": res["tokens"], "dtype": "float32"}


def score_tasks(model: torch.nn.Module, tokenizer: Any, names: list[str], eval_cfg: Any, device: torch.device, reporter: Reporter, label: str) -> Scores:
    lm = hf_lm(model, tokenizer, eval_cfg.task_batch_size, device)
    metrics, stderr, protocol = run_tasks(lm, names, eval_cfg.limit, reporter, label)
    return Scores(metrics, stderr, {"ppl": {}, "tasks": protocol})


def score_streamed_tasks(model_path: Path, tokenizer: Any, names: list[str], eval_cfg: Any, device: torch.device, reporter: Reporter, label: str) -> Scores:
    """:func:`score_tasks` of a model read block by block from its files (one block in memory)."""
    quiet_lm_eval()
    model = StreamedModel.open(model_path, device, torch.float32)
    lm = streamed_lm(model, adapter_for(model.model.config.model_type), tokenizer, eval_cfg.task_batch_size)
    metrics, stderr, protocol = run_tasks(lm, names, eval_cfg.limit, reporter, label)
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


def evaluate_streamed(model_path: Path, tokenizer: Any, eval_cfg: Any, device: torch.device, reporter: Reporter, label: str) -> Scores:
    """Every metric of the suite on a plain model read block by block from its
    files: the same scores as :func:`evaluate`, one block in memory."""
    scores = Scores()
    for spec in eval_cfg.ppl:
        scores.merge(score_streamed_ppl(model_path, tokenizer, spec, eval_cfg, device, reporter, label))
        release_freed_memory()
    if eval_cfg.tasks:
        scores.merge(score_streamed_tasks(model_path, tokenizer, list(eval_cfg.tasks), eval_cfg, device, reporter, label))
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
    label = "the original model"
    for kind, name, item in missing:  # streamed: one block in memory, whatever the model's size
        score = score_streamed_ppl if kind == "ppl" else score_streamed_tasks
        got = score(model_path, tokenizer, name if kind == "ppl" else [name], eval_cfg, device, reporter, label)
        atomic_write_json(_cache_file(model_fp, item), {**got.to_json(), "model": spec})
        scores.merge(got)
        release_freed_memory()
    return scores
