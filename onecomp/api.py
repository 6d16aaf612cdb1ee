"""The Python API: ``onecomp.compress`` runs the engine that ``onecomp compress``
runs, with the same defaults, so a job started from Python and one started from
the shell with the same settings are the same job."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onecomp.errors import OneCompError

if TYPE_CHECKING:
    from onecomp.config import JobConfig
    from onecomp.pipeline import JobSummary


def compress(
    model: str | os.PathLike[str] | None,
    config: JobConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
) -> JobSummary:
    """Compress ``model``, write a pivot after each stage, evaluate every pivot.

    ``model``: a hub id, local model directory, ``.gguf`` file or built-in alias
    (``"smollm2-135m"``); it replaces ``config``'s model. ``None`` keeps the
    config's (or, refining a pivot, the model the pivot was made from).

    ``config``: a :class:`onecomp.JobConfig`, a mapping with the keys of
    ``job.yaml`` (e.g. ``{"quant": {"bits": 3}, "eval": {"tasks": []}}``), or the
    path of a job YAML; ``None`` for every default. Unset settings get the
    defaults of ``onecomp compress``; ``output`` defaults to
    ``onecomp-out/<model>-<method>-<format>`` in the current directory.

    ``overwrite``, ``resume``, ``force``: as ``--overwrite``, ``--resume`` and
    ``--force`` of ``onecomp compress``. ``progress``: draw progress bars on
    stderr (otherwise progress goes only to the ``onecomp`` logger and the job's
    ``logs/onecomp.log``).

    Returns the job's summary: ``.output`` (the job directory), ``.rows`` (the
    original and every pivot, with ``.path``, ``.bpw`` and ``.metrics``) and
    ``.best`` (the name of the best pivot). Load a pivot with :func:`onecomp.load`.

    Raises :class:`onecomp.errors.OneCompError`, with a one-line message, for
    settings, inputs or an environment that cannot run the job.
    """
    from onecomp.job_defaults import complete_job
    from onecomp.pipeline import compress as run

    data, where = _settings(config)
    if model is not None:
        data["model"] = os.fspath(model)
    if output is not None:
        data["output"] = os.fspath(output)
    job = complete_job(data, where=where)
    return run(job, _reporter(progress), overwrite=overwrite, resume=resume, force=force)


def _settings(config: object) -> tuple[dict[str, Any], str]:
    """The job settings ``config`` gives, as job.yaml's keys, and where they came from (for messages)."""
    from onecomp.config import JobConfig, load_job_yaml

    if config is None:
        return {}, ""
    if isinstance(config, JobConfig):
        return config.model_dump(mode="json", by_alias=True), "config"
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), "config"
    if isinstance(config, (str, os.PathLike)):
        return load_job_yaml(Path(config)), os.fspath(config)
    raise OneCompError(
        f"config must be a onecomp.JobConfig, a mapping of job.yaml's keys or the path of a job YAML, not {type(config).__name__}"
    )


def _reporter(progress: bool):  # noqa: ANN202 - a Reporter, imported lazily
    if not progress:
        return None
    from onecomp.ui import RichReporter

    return RichReporter()
