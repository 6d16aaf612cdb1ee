"""Read a batch YAML, expand it into jobs, and validate all of them at once.

Every error of the file (its own structure, then every expanded job checked by
:class:`onecomp.config.JobConfig`) is collected and raised as one
:class:`OneCompError`, each line naming the YAML location where the bad value
was written, so one edit round fixes the file and nothing runs before that.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from onecomp.batch.provenance import Fragment, Key, combine, locate, render
from onecomp.batch.schema import BatchConfig, BudgetEntry, MethodEntry, check_name
from onecomp.config import JobConfig, QuantConfig, read_yaml_mapping
from onecomp.plan.settings import PlanSettings
from onecomp.errors import OneCompError

STAGE_ABBREV = {"layerwise": "lw", "blockwise": "bw", "global": "gl"}
_JOB_FIELDS = {f.alias or n for n, f in JobConfig.model_fields.items()} | set(JobConfig.model_fields)
_FIELD_MESSAGE = re.compile(r"^([a-z_]+): (.*)$", re.S)


@dataclass
class BatchJob:
    """One expanded, validated job of a batch."""

    name: str
    where: str  # YAML location: jobs[2], or matrix (models[0] x methods[1] x ...)
    config: JobConfig
    method: str  # the method label of the job's name (matrix method name, or quant.method)
    budget: str  # format or budget label: w4g128, mixed3bpw, ...

    @property
    def dir(self) -> Path:
        return Path(self.config.output)


@dataclass
class Batch:
    source: Path | None
    output: Path
    jobs: list[BatchJob]

    def select(self, only: list[str] | None) -> list[BatchJob]:
        """The jobs named in ``only`` (all when None), refusing names the batch does not have."""
        if not only:
            return list(self.jobs)
        names = {j.name for j in self.jobs}
        unknown = [n for n in only if n not in names]
        if unknown:
            raise OneCompError(f"--only names no job of this batch: {', '.join(unknown)}; its jobs: {', '.join(j.name for j in self.jobs)}")
        return [j for j in self.jobs if j.name in only]


@dataclass
class _Candidate:
    where: str
    fragments: list[Fragment]
    name: str | None = None
    method: str | None = None


def is_batch_mapping(data: Any) -> bool:
    """Whether a YAML mapping is a batch (has jobs: or matrix:) rather than a single job."""
    return isinstance(data, dict) and ("jobs" in data or "matrix" in data)


def read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "batch file", "a mapping with output: and jobs: and/or matrix:")


def load_batch(path: Path) -> Batch:
    return expand_batch(read_yaml(path), source=Path(path))


def _message(err: dict[str, Any]) -> str:
    return str(err["msg"]).removeprefix("Value error, ")


def _schema_errors(data: dict[str, Any]) -> list[str]:
    try:
        BatchConfig.model_validate(data)
    except ValidationError as err:
        return [f"{render('', e['loc']) or 'batch'}: {_message(e)}" for e in err.errors()]
    return []


def _valid(adapter: TypeAdapter, value: Any) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _whole(value: Any) -> Any:
    """4.0 is the integer 4 (integer formats); 2.5 stays a rate."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _budget_fragment(raw: Any, root: str) -> Fragment:
    if not isinstance(raw, dict):
        return Fragment({"quant": {"bits": _whole(raw)}}, {("quant", "bits"): root})
    data: dict[str, Any] = {}
    where: dict[Key, str] = {}
    for key, value in raw.items():
        section = "plan" if key in ("bpw", "memory_gb") else "quant"
        data.setdefault(section, {})[key] = _whole(value) if key == "bits" else value
        where[(section, key)] = f"{root}.{key}"
    return Fragment(data, where)


def _method_fragment(raw: Any, root: str) -> tuple[Fragment, str | None]:
    if isinstance(raw, str):
        return Fragment({"quant": {"method": raw}}, {("quant", "method"): root}), raw
    quant = raw.get("quant") or {}
    return Fragment.at({"quant": quant}, root), raw.get("name") or quant.get("method")


def _matrix_candidates(matrix: Any, base: list[Fragment]) -> list[_Candidate]:
    """The cartesian product of the matrix's well-formed entries (bad ones are already reported)."""
    if not isinstance(matrix, dict) or not isinstance(matrix.get("models"), list):
        return []
    dims: list[tuple[str, list[tuple[int, Any]]]] = []
    checks = {"models": TypeAdapter(str), "methods": TypeAdapter(MethodEntry), "budgets": TypeAdapter(BudgetEntry), "stages": TypeAdapter(list[str])}
    for dim, adapter in checks.items():
        values = matrix.get(dim)
        if values is None:
            continue
        if not isinstance(values, list):
            return []
        dims.append((dim, [(i, v) for i, v in enumerate(values) if _valid(adapter, v)]))
    out = []
    for combo in itertools.product(*(entries for _, entries in dims)):
        frags, method = list(base), None
        for (dim, _), (i, value) in zip(dims, combo):
            root = f"matrix.{dim}[{i}]"
            if dim == "models":
                frags.append(Fragment({"model": value}, {("model",): root}))
            elif dim == "methods":
                frag, method = _method_fragment(value, root)
                frags.append(frag)
            elif dim == "budgets":
                frags.append(_budget_fragment(value, root))
            else:
                frags.append(Fragment({"stages": value}, {("stages",): root}))
        where = "matrix (" + " x ".join(f"{dim}[{i}]" for (dim, _), (i, _) in zip(dims, combo)) + ")"
        out.append(_Candidate(where, frags, method=method))
    return out


def _without_output(data: dict[str, Any], root: str, errors: list[str]) -> dict[str, Any]:
    if "output" in data:
        errors.append(f"{render(root, ('output',))}: not allowed in a batch: every job writes to OUTPUT/<job name>")
        data = {k: v for k, v in data.items() if k != "output"}
    return data


def _job_candidates(jobs: Any, base: list[Fragment], errors: list[str]) -> list[_Candidate]:
    out = []
    for i, entry in enumerate(jobs if isinstance(jobs, list) else []):
        if not isinstance(entry, dict):
            continue  # reported by the schema
        root = f"jobs[{i}]"
        name = entry.get("name")
        if name is not None:
            try:
                check_name(str(name))
            except ValueError as exc:
                errors.append(f"{root}.name: {exc}")
        data = _without_output({k: v for k, v in entry.items() if k != "name"}, root, errors)
        out.append(_Candidate(root, [*base, Fragment.at(data, root)], name=None if name is None else str(name)))
    return out


def budget_label(data: dict[str, Any]) -> str:
    """Short label of a job's formats (w4g128, mixed3bpw, mixed0.08GB, plan, ...) from its raw or dumped settings."""
    if data.get("from_pivot"):
        return "refine"
    try:
        plan = PlanSettings.model_validate(data.get("plan") or {})
    except ValidationError:
        return "custom"
    if plan.bpw is not None:
        return f"mixed{plan.bpw:g}bpw"
    if plan.memory_gb is not None:
        return "mixed-auto" if plan.memory_gb == "auto" else f"mixed{plan.memory_gb:g}GB"
    if plan.file is not None:
        return "plan"
    try:
        return QuantConfig.model_validate(data.get("quant") or {}).format().label()
    except (ValidationError, ValueError):
        return "custom"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"


def derive_name(data: dict[str, Any], method: str | None = None) -> str:
    """Deterministic job name: model-method-format[-stages], e.g. smollm2-135m-gptq-w4g128-lw+bw."""
    model = str(data.get("model") or "model")
    quant = data.get("quant") if isinstance(data.get("quant"), dict) else {}
    parts = [Path(model.rstrip("/")).name.removesuffix(".gguf"), method or str(quant.get("method", "gptq")), budget_label(data)]
    stages = data.get("stages")
    if isinstance(stages, list) and stages != ["layerwise"]:
        parts.append("+".join(STAGE_ABBREV.get(str(s), str(s)) for s in stages))
    return "-".join(_safe(p) for p in parts)


def _job_errors(err: ValidationError, where: dict[Key, str], fallback: str) -> list[str]:
    out = []
    for e in err.errors():
        loc, msg = tuple(e["loc"]), _message(e)
        match = _FIELD_MESSAGE.match(msg)
        if not loc and match and match.group(1) in _JOB_FIELDS:  # a whole-job check that names its field
            loc, msg = (match.group(1),), match.group(2)
        out.append(f"{locate(loc, where, fallback)}: {msg}")
    return out


def _natural(text: str) -> list[Any]:
    """Sort key that puts jobs[2] before jobs[10]."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def expand_batch(data: dict[str, Any], source: Path | None = None) -> Batch:
    """All jobs of a batch mapping, validated; every error of the file in one OneCompError."""
    errors = _schema_errors(data)
    output = Path(data["output"]) if isinstance(data.get("output"), str) else Path(".")
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    base = [Fragment.at(_without_output(defaults, "defaults", errors), "defaults")]
    candidates = _job_candidates(data.get("jobs"), base, errors) + _matrix_candidates(data.get("matrix"), base)
    named: list[tuple[str, _Candidate, JobConfig | None]] = []
    for cand in candidates:
        merged, where = combine(cand.fragments)
        name = cand.name or derive_name(merged, cand.method)
        try:
            config: JobConfig | None = JobConfig.model_validate({**merged, "output": str(output / name)})
        except ValidationError as err:
            errors.extend(_job_errors(err, where, cand.where))
            if cand.name is None:
                continue  # a name derived from invalid settings says nothing
            config = None
        named.append((name, cand, config))
    jobs: list[BatchJob] = []
    seen: dict[str, str] = {}
    for name, cand, config in named:
        if name in seen:
            errors.append(f"{seen[name]} and {cand.where} are both named {name!r}; give one of them another name (name:)")
            continue
        seen[name] = cand.where
        if config is not None:
            jobs.append(BatchJob(name, cand.where, config, cand.method or config.quant.method, budget_label(config.model_dump(mode="json", by_alias=True))))
    errors = sorted(dict.fromkeys(errors), key=_natural)
    if errors:
        what = f"{source}: " if source else ""
        if len(errors) == 1:
            raise OneCompError(f"{what}{errors[0]} (nothing was run)")
        raise OneCompError(f"{what}{len(errors)} errors, nothing was run:\n  " + "\n  ".join(errors))
    return Batch(source, output, jobs)
