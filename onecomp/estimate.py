"""What the phase memory estimates share: a phase's peak, and the job's shapes
that size it, computed from the model's config alone (no weights needed).

Each phase owns its estimate (the layer-wise stage in ``stages/layerwise_stage``,
the refinement stages in ``stages/refine_stages``, the planner's measurement in
``plan/run``, the evaluations in ``eval/suite``); ``preflight`` composes the
ones a job runs. Host peaks do not add up across phases: the executor returns
the heap's freed pages to the system between them
(:func:`onecomp.runtime.memory.release_freed_memory`), so the job's host peak
is the process's own memory plus the largest phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onecomp.formats.base import FormatSpec, TrainingFootprint, plan_training_footprint

if TYPE_CHECKING:
    from onecomp.config import JobConfig
    from onecomp.inspect import ModelProfile

F32, BF16 = 4, 2
# Bytes per token and decoder block that autograd keeps for the backward pass of
# a bfloat16-autocast forward, per unit of hidden width and of intermediate
# width: about four float32 copies of the residual stream (norm inputs and
# outputs), six bfloat16 ones (linear inputs, q/k/v/attention output) and four
# bfloat16 copies of the MLP's intermediate activations. On SmolLM2 this gives
# 33 KB; saved-tensor hooks measured 30.7 KB.
ACT_BYTES_PER_HIDDEN = 36
ACT_BYTES_PER_INTERMEDIATE = 8
# Positions per vocabulary-projection chunk of the gradient passes and the
# global stage (its default).
HEAD_CHUNK = 128


@dataclass(frozen=True)
class Peak:
    """A phase's peak: host and device bytes beyond the process's own memory."""

    host: int
    device: int = 0

    def to_json(self) -> dict[str, int]:
        return {"host": int(self.host), "device": int(self.device)}


@dataclass(frozen=True)
class JobShape:
    """The model's shapes and the job's settings, as the phase estimates read them.

    ``bits``: the widest planned format's bits per weight, rounded up (8 for a
    mixed job whose plan is not solved yet: an upper bound); ``training``: the
    plan's training views (None: integer views, 2 + 2 bytes per weight);
    ``mixed``: the job plans its own formats; ``weights_rows``: its layer-wise
    method weights rows by loss gradients (a gradient pass first).
    """

    profile: "ModelProfile"
    config: "JobConfig"
    on_gpu: bool
    bits: int = 8
    training: TrainingFootprint | None = None
    mixed: bool = False
    weights_rows: bool = False

    @classmethod
    def of(
        cls, config: "JobConfig", profile: "ModelProfile", on_gpu: bool, plan: dict[str, FormatSpec] | None, mixed: bool, weights_rows: bool
    ) -> "JobShape":
        shapes = {li.name: (li.out_features, li.in_features) for li in profile.linears}
        known = {n: f for n, f in (plan or {}).items() if n in shapes}
        bits = math.ceil(max((f.bits_per_weight(*shapes[n]) for n, f in known.items()), default=8))
        training = plan_training_footprint(known, shapes) if plan is not None else None
        return cls(profile, config, on_gpu, bits, training, mixed, weights_rows)

    def calibration_rows(self, stage_samples: int | None) -> int:
        """Sequences a stage calibrates on: its own count, at most the job's."""
        return min(stage_samples or self.config.calib.nsamples, self.config.calib.nsamples)

    @property
    def seqlen(self) -> int:
        return self.config.calib.seqlen or (2048 if self.on_gpu else 512)

    @property
    def compute_bytes(self) -> int:
        return F32 if self.config.calib.dtype == "float32" else BF16

    @property
    def evaluates(self) -> bool:
        return bool(self.config.eval.ppl or self.config.eval.tasks)

    @property
    def weights32(self) -> int:
        """The whole model in float32."""
        return self.profile.total_params * F32

    @property
    def embed_params(self) -> int:
        p = self.profile
        return p.vocab_size * p.hidden_size * (1 if p.tied_head else 2)

    @property
    def block32(self) -> int:
        """One decoder block in float32 (its linears and norms)."""
        return (self.qparams // max(self.profile.num_blocks, 1) + 4 * self.profile.hidden_size) * F32

    @property
    def module32(self) -> int:
        """The largest module a streamed pass loads in float32: a block, or the embedding (the head is as large)."""
        return max(self.block32, self.profile.vocab_size * self.profile.hidden_size * F32)

    @property
    def qparams(self) -> int:
        return sum(li.params for li in self.profile.linears)

    @property
    def pivot_model(self) -> int:
        """A pivot as ``load`` builds it: float32 embedding, head and norms, the quantized layers' codes at ``bits``."""
        body = max(self.profile.total_params - self.embed_params, self.qparams)
        return self.embed_params * F32 + (self.qparams * self.bits + 7) // 8 + (body - self.qparams) * F32

    @property
    def act_per_token(self) -> int:
        return ACT_BYTES_PER_HIDDEN * self.profile.hidden_size + ACT_BYTES_PER_INTERMEDIATE * self.profile.intermediate_size

    @property
    def train(self) -> TrainingFootprint:
        return self.training or TrainingFootprint(view=self.qparams * BF16, saved=self.qparams * BF16)

    def forward_buffers(self, batch: int, seqlen: int, dtype_bytes: int = F32) -> int:
        """One block's forward activations for ``batch`` sequences (MLP intermediates, q/k/v, attention scores)."""
        p = self.profile
        width = max(p.intermediate_size, p.hidden_size)
        acts = batch * seqlen * (4 * width + 6 * p.hidden_size) * dtype_bytes
        return acts + batch * max(p.num_heads, 1) * seqlen * seqlen * F32

    def grad_pass(self, samples: int) -> int:
        """A loss-gradient pass over the model (row weights, sensitivity): one
        batch's input of every block, one block's saved activations, the
        checkpointed vocabulary chunk (logits, log-softmax, gradient)."""
        p, batch = self.profile, min(self.config.calib.batch_size, samples)
        return (
            p.num_blocks * batch * self.seqlen * p.hidden_size * F32
            + batch * self.seqlen * self.act_per_token
            + 3 * batch * HEAD_CHUNK * p.vocab_size * F32
        )


@dataclass
class MemoryEstimate:
    """A job's peaks: ``host_peak_bytes`` = ``runtime`` + ``job_runtime`` + the
    largest phase's host part; ``device_peak_bytes``: the largest phase's device
    part. ``phases`` in the order the job runs them."""

    host_peak_bytes: int
    device_peak_bytes: int
    runtime: int
    job_runtime: int
    phases: dict[str, Peak]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host_peak_bytes": self.host_peak_bytes,
            "device_peak_bytes": self.device_peak_bytes,
            "runtime": self.runtime,
            "job_runtime": self.job_runtime,
            "phases": {k: v.to_json() for k, v in self.phases.items()},
        }

    def host_of(self, phase: str) -> int:
        """The process's host peak while ``phase`` runs."""
        return self.runtime + self.job_runtime + self.phases[phase].host

