"""Measured sensitivity: for every layer and every candidate format, the error the
job's own quantizer makes on calibration activations, weighted by how much the
layer's outputs matter to the loss.

One pass over the model, block by block, on the full-precision stream: a forward
per block collects every layer's input statistics (and gives the next block's
inputs), then the method quantizes each weight in all candidate formats (GPTQ
stacks them into one pass over the columns). A gradient pass first gives each
output channel's E[g^2] (see ``fisher``). The result is a small JSON file that
re-planning at any budget reads without touching the model again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from onecomp import __version__
from onecomp.errors import OneCompError
from onecomp.formats import FormatSpec, format_from_json
from onecomp.io import atomic_write_json, read_json
from onecomp.methods import Method, MethodOptions, method_for
from onecomp.models.adapters import ArchAdapter
from onecomp.runtime.block_io import capture_block_inputs, forward_with_input_hessians, propagate
from onecomp.runtime.skeleton import StreamedModel

SCHEMA = 1


@dataclass
class Measurement:
    """Per layer: its shape, the unit it is fused with, and per candidate label the
    loss-weighted error (predicted rise of the mean token loss, in nats) and the
    relative output error tr(D S D^T) / tr(W S W^T)."""

    fingerprint: dict[str, Any]
    candidates: dict[str, dict[str, Any]]  # label -> stored format spec (JSON)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": __version__, "fingerprint": self.fingerprint, "candidates": self.candidates, "layers": self.layers, "info": self.info}

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    def formats(self) -> dict[str, FormatSpec]:
        return {label: format_from_json(spec) for label, spec in self.candidates.items()}

    @classmethod
    def load(cls, path: Path) -> "Measurement":
        data = read_json(path, "measurement")
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or "layers" not in data:
            raise OneCompError(f"{path} is not a onecomp measurement file (schema {SCHEMA})")
        return cls(data["fingerprint"], data["candidates"], data["layers"], data.get("info", {}))


def candidate_errors(
    weight: torch.Tensor,
    approximations: list[torch.Tensor],
    hessian: torch.Tensor,
    grad_sq: torch.Tensor,
    row_weights: torch.Tensor | None = None,
) -> list[tuple[float, float]]:
    """(loss-weighted error, relative output error) of each approximation of ``weight``.

    With S = E[x x^T] = H/2 and D = W - W_hat, output channel q's mean squared error
    is (D S D^T)_qq; weighting it by E[g_q^2] and halving gives the second-order
    rise of the mean token loss. With ``row_weights``, the rows are a sample of the
    layer's output channels and each counts for that many (see :func:`sample_rows`).
    """
    sigma = hessian.float() / 2
    w = weight.float()
    rw = torch.ones(w.shape[0], device=w.device) if row_weights is None else row_weights.float().to(w.device)
    base = float((((w @ sigma) * w).sum(1) * rw).sum().clamp(min=1e-30))
    d = torch.cat([w - a.float() for a in approximations])
    row_err = ((d @ sigma) * d).sum(1).view(len(approximations), -1).clamp(min=0) * rw.view(1, -1)
    weighted = 0.5 * (row_err * grad_sq.float().view(1, -1)).sum(1)
    relative = row_err.sum(1) / base
    return [(float(a), float(b)) for a, b in zip(weighted, relative)]


def sample_rows(importance: torch.Tensor, fraction: float, min_rows: int, heavy: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Output channels to measure, and how many channels each stands for.

    A row-separable quantizer (GPTQ, RTN: each output channel is quantized on its
    own) has a layer error that is a sum over rows, so measuring the exact
    quantizer on a sample of rows estimates it without bias. LoRDS shares only its
    rank-r factor A across rows (r is 1-3 on SmolLM2); fitted on the sample, A
    suits the sampled rows slightly better than the whole layer's would, so the
    estimate is a little low (up to 15%, 7% on average, on SmolLM2 layers; docs/notes/benchmarks-notebook.md). The ``heavy`` rows of
    largest ``importance`` are always measured (weight 1): they carry most of the
    weighted error. The rest, in order of importance, is sampled systematically
    (every k-th row from a random start), so each stratum of importance is
    represented; each sampled row stands for the rows of its stride.
    """
    n = importance.numel()
    want = max(min_rows, int(round(fraction * n)))
    if want >= n:
        return torch.arange(n), torch.ones(n)
    order = torch.argsort(importance, descending=True, stable=True)
    top = order[: min(heavy, want)]
    rest = order[top.numel() :]
    k = rest.numel() / (want - top.numel())
    start = float(torch.rand(1, generator=torch.Generator().manual_seed(seed))) * k
    picks = (start + k * torch.arange(want - top.numel())).long().clamp(max=rest.numel() - 1)
    rows = torch.cat([top, rest[picks]])
    weights = torch.cat([torch.ones(top.numel()), torch.full((picks.numel(),), rest.numel() / picks.numel())])
    keep = torch.argsort(rows)
    return rows[keep], weights[keep]


ProgressFn = Callable[[int, str], None]


@dataclass(frozen=True)
class RowSampling:
    fraction: float  # share of each layer's output channels measured
    min_rows: int  # but at least this many (all of a smaller layer)
    heavy: int  # always including this many of the most important rows


def candidate_producers(
    specs: list[FormatSpec], method: Method, options: MethodOptions
) -> list[tuple[Method, MethodOptions, list[int]]]:
    """The candidates grouped by the method that produces them (the job's own
    for its formats), so integer, binary-factor and low-rank-scaled candidates
    are each measured with their own quantizer (with its measuring options:
    ``Method.measure_options``)."""
    groups: dict[str, tuple[Method, MethodOptions, list[int]]] = {}
    for i, spec in enumerate(specs):
        producer, opts = method_for(spec, method, options)
        groups.setdefault(producer.name, (producer, producer.options_for_measuring(opts), []))[2].append(i)
    return list(groups.values())


def measure_blocks(
    model: StreamedModel,
    adapter: ArchAdapter,
    names: list[str],
    candidates: dict[str, FormatSpec],
    method: Method,
    options: MethodOptions,
    grad_sq: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    batch_size: int,
    done: dict[str, dict[str, Any]] | None = None,
    sampling: RowSampling | None = None,
    on_layer: ProgressFn | None = None,
    on_block: Callable[[int, dict[str, dict[str, Any]]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Errors of every named layer (full names) in every candidate. Blocks whose
    layers are all in ``done`` are only run forward (to give the next inputs).
    One block is present at a time, in the model's compute dtype; each weight
    is measured from its stored values in float32."""
    done = dict(done or {})
    wanted = set(names)
    labels = list(candidates)
    specs = [candidates[label] for label in labels]
    producers = candidate_producers(specs, method, options)
    device = model.device
    blocks = adapter.blocks(model.model)
    with model.loaded(model.module_name(model.model.get_input_embeddings()), dtype=torch.float32):
        inputs = capture_block_inputs(model.model, blocks, input_ids, batch_size, device)
    for index in range(len(blocks)):
        prefix = adapter.block_prefix(index)
        groups = [[n for n in group if f"{prefix}.{n}" in wanted] for group in adapter.groups]
        groups = [g for g in groups if g]
        todo = [g for g in groups if any(f"{prefix}.{n}" not in done for n in g)]
        block = model.load(prefix)
        if not todo:
            propagate(block, inputs, index, device)
        else:
            hessians = forward_with_input_hessians(block, [block.get_submodule(g[0]) for g in todo], inputs, index, device)
            new: dict[str, dict[str, Any]] = {}
            for group, hessian in zip(todo, hessians):
                for name in group:
                    full = f"{prefix}.{name}"
                    t0 = time.perf_counter()
                    w32 = model.read(f"{full}.weight", torch.float32)
                    g2 = grad_sq[full].to(device)
                    errors: dict[str, dict[str, float]] = {}
                    measured_rows = w32.shape[0]
                    sample = None  # (rows, weights), the same for every producer that samples
                    for producer, opts, idx in producers:
                        rows, weights = None, None
                        if sampling is not None and producer.row_sampling:
                            if sample is None:
                                importance = g2 * ((w32 @ hessian) * w32).sum(1)  # each row's weighted output energy
                                picked, weights = sample_rows(importance.cpu(), sampling.fraction, sampling.min_rows, sampling.heavy, index)
                                sample = (picked.to(device), weights)
                            rows, weights = sample
                            measured_rows = min(measured_rows, int(rows.numel()))
                        w_meas = w32 if rows is None else w32[rows]
                        fmts = [specs[i].resolved(*w32.shape) for i in idx]
                        results = producer.quantize_weighted(w_meas, hessian, fmts, opts, g2 if rows is None else g2[rows])
                        deqs = [r.dequantize() for r, _ in results]
                        errs = candidate_errors(w_meas, deqs, hessian, g2 if rows is None else g2[rows], weights)
                        errors.update({labels[i]: {"weighted": e[0], "relative": e[1]} for i, e in zip(idx, errs)})
                    new[full] = {
                        "shape": list(w32.shape),
                        "rows_measured": measured_rows,
                        "errors": {label: errors[label] for label in labels},
                        "seconds": time.perf_counter() - t0,
                    }
                    if on_layer:
                        on_layer(index, full)
                del hessian
            done.update(new)
            if on_block:
                on_block(index, new)
        model.release(prefix)
    return {n: done[n] for n in names}
