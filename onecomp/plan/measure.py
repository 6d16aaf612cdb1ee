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

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from onecomp import __version__
from onecomp.errors import OneCompError
from onecomp.formats import FormatSpec, format_from_json
from onecomp.io import atomic_write_json
from onecomp.methods import Method, MethodOptions
from onecomp.models.adapters import ArchAdapter
from onecomp.stages.block_io import capture_block_inputs, forward_with_input_hessians, propagate

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
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise OneCompError(f"cannot read measurement {path}: {exc.strerror}") from None
        except ValueError:
            raise OneCompError(f"{path} is not a measurement file (not JSON)") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA or "layers" not in data:
            raise OneCompError(f"{path} is not a onecomp measurement file (schema {SCHEMA})")
        return cls(data["fingerprint"], data["candidates"], data["layers"], data.get("info", {}))


def candidate_errors(
    weight: torch.Tensor, approximations: list[torch.Tensor], hessian: torch.Tensor, grad_sq: torch.Tensor
) -> list[tuple[float, float]]:
    """(loss-weighted error, relative output error) of each approximation of ``weight``.

    With S = E[x x^T] = H/2 and D = W - W_hat, output channel q's mean squared error
    is (D S D^T)_qq; weighting it by E[g_q^2] and halving gives the second-order
    rise of the mean token loss.
    """
    sigma = hessian.float() / 2
    w = weight.float()
    base = float(((w @ sigma) * w).sum().clamp(min=1e-30))
    d = torch.cat([w - a.float() for a in approximations])
    row_err = ((d @ sigma) * d).sum(1).view(len(approximations), -1).clamp(min=0)
    weighted = 0.5 * (row_err * grad_sq.float().view(1, -1)).sum(1)
    relative = row_err.sum(1) / base
    return [(float(a), float(b)) for a, b in zip(weighted, relative)]


ProgressFn = Callable[[int, str], None]


def measure_blocks(
    model: nn.Module,
    adapter: ArchAdapter,
    names: list[str],
    candidates: dict[str, FormatSpec],
    method: Method,
    options: MethodOptions,
    grad_sq: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    compute_dtype: torch.dtype,
    done: dict[str, dict[str, Any]] | None = None,
    on_layer: ProgressFn | None = None,
    on_block: Callable[[int, dict[str, dict[str, Any]]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Errors of every named layer (full names) in every candidate. Blocks whose
    layers are all in ``done`` are only run forward (to give the next inputs)."""
    done = dict(done or {})
    wanted = set(names)
    labels = list(candidates)
    specs = [candidates[label] for label in labels]
    blocks = adapter.blocks(model)
    inputs = capture_block_inputs(model, blocks, input_ids, batch_size, device)
    for index, block in enumerate(blocks):
        prefix = adapter.block_prefix(index)
        groups = [[n for n in group if f"{prefix}.{n}" in wanted] for group in adapter.groups]
        groups = [g for g in groups if g]
        todo = [g for g in groups if any(f"{prefix}.{n}" not in done for n in g)]
        masters = {k: v.detach().clone() for k, v in block.state_dict().items()}
        block.to(device=device, dtype=compute_dtype)
        if not todo:
            propagate(block, inputs, index, device)
        else:
            hessians = forward_with_input_hessians(block, [block.get_submodule(g[0]) for g in todo], inputs, index, device)
            new: dict[str, dict[str, Any]] = {}
            for group, hessian in zip(todo, hessians):
                for name in group:
                    full = f"{prefix}.{name}"
                    t0 = time.perf_counter()
                    w32 = masters[f"{name}.weight"].to(device=device, dtype=torch.float32)
                    results = method.quantize_formats(w32, hessian, specs, options)
                    errors = candidate_errors(w32, [r.dequantize() for r, _ in results], hessian, grad_sq[full].to(device))
                    new[full] = {
                        "shape": list(w32.shape),
                        "errors": {label: {"weighted": e[0], "relative": e[1]} for label, e in zip(labels, errors)},
                        "seconds": time.perf_counter() - t0,
                    }
                    if on_layer:
                        on_layer(index, full)
                del hessian
            done.update(new)
            if on_block:
                on_block(index, new)
        block.to(device="cpu", dtype=torch.float32)
        block.load_state_dict(masters)
    return {n: done[n] for n in names}
