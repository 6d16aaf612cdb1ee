"""Batch jobs: one YAML file describes many compression jobs (an explicit list
and/or a matrix of models x methods x budgets x stages); each runs in its own
job directory with the executor's resume, and the batch ends with a comparison
of every pivot. See docs/batch.md."""

from __future__ import annotations

from onecomp.batch.expand import Batch, BatchJob, derive_name, expand_batch, is_batch_mapping, load_batch
from onecomp.batch.runner import BatchOutcome, JobRecord, run_batch

__all__ = ["Batch", "BatchJob", "BatchOutcome", "JobRecord", "derive_name", "expand_batch", "is_batch_mapping", "load_batch", "run_batch"]
