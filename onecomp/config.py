"""The job configuration: pydantic models with extra="forbid" that are also the
YAML schema read by ``--config`` and written to ``OUT/job.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from onecomp.errors import OneCompError
from onecomp.eval.builtin_tasks import BUILTIN_TASKS
from onecomp.formats.base import FormatSpec
from onecomp.formats.intq import SUPPORTED_BITS
from onecomp.method_options import METHOD_SCHEMAS as METHODS
from onecomp.plan.settings import PlanSettings
from onecomp.refine.settings import BlockwiseSettings, GlobalSettings
from onecomp.stages.qep import QEPSettings

STAGES = ("layerwise", "blockwise", "global")
StageName = Literal["layerwise", "blockwise", "global"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _as_line(error: Any) -> Any:
    """A validation error entry re-raised as a plain value error with the same location and message."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    return {"type": PydanticCustomError("value_error", msg), "loc": tuple(error["loc"]), "input": error.get("input")}


class QuantConfig(_Strict):
    method: str = Field("gptq", description="layer-wise method: " + ", ".join(sorted(METHODS)))
    bits: int | float | None = Field(
        None,
        description=f"uniform bits: integer methods take one of {SUPPORTED_BITS} (default 4); dbf/mdbf take bits per weight, "
        "every sign and float counted (default 2.0). Unused when plan: sets a budget or a plan file",
    )
    group_size: int = Field(128, description="columns per scale group, -1 for one group per output channel (uniform format)")
    sym: bool = Field(False, description="symmetric grid, no stored zero points (uniform format)")
    options: dict[str, Any] = Field(default_factory=dict, validate_default=True, description="method options of the chosen method")
    true_sequential: bool = Field(
        True,
        description="collect each group's statistics after the groups before it in the block were quantized "
        "(keep it with QEP: corrected groups shift the later groups' inputs; docs/notes/benchmarks-notebook.md)",
    )
    qep: QEPSettings = Field(default_factory=QEPSettings, description="quantization error propagation: correct each layer for the error upstream layers left in its inputs")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; available: {', '.join(sorted(METHODS))}")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if method not in METHODS:
            return v  # the method's own error is reported
        try:
            return METHODS[method].options.model_validate(v).model_dump()
        except ValidationError as err:
            raise ValueError(f"options of {method}: {format_validation_error(err)}") from None

    @model_validator(mode="wrap")
    @classmethod
    def _check(cls, data: Any, handler: ModelWrapValidatorHandler["QuantConfig"]) -> "QuantConfig":
        """Validate bits and group size against the method's format, also when
        another field fails (an after-validator would be skipped then), so one
        message names every mistake of the section."""
        try:
            quant = handler(data)
        except ValidationError as err:
            errors = err.errors()
            failed = {e["loc"][0] for e in errors if e["loc"]}
            if not isinstance(data, dict) or failed & {"method", "bits", "group_size", "sym", "options"}:
                raise
            rest = {k: v for k, v in data.items() if k in cls.model_fields and k not in failed}
            try:
                handler(rest).format()
            except ValidationError as exc:  # the format's own mistakes, added to the others
                raise ValidationError.from_exception_data(cls.__name__, [*errors, *map(_as_line, exc.errors())]) from None
            except ValueError as exc:
                raise ValidationError.from_exception_data(cls.__name__, [*errors, _as_line({"loc": (), "msg": str(exc), "input": data})]) from None
            raise
        if quant.method in METHODS:
            quant.format()  # validates bits and group size
        return quant

    def format(self) -> FormatSpec:
        """The uniform format these settings ask the method for."""
        return METHODS[self.method].format_for(self.bits, self.group_size, self.sym, self.method_options())

    def method_options(self):  # noqa: ANN201 - type depends on the method
        return METHODS[self.method].options.model_validate(self.options)


class CalibConfig(_Strict):
    source: str = Field("builtin", description="builtin | pydoc | c4 | wikitext2 | path to .txt/.jsonl")
    nsamples: int = Field(128, ge=1, description="number of calibration sequences")
    seqlen: int | None = Field(None, ge=8, description="tokens per sequence (default 512 on CPU, 2048 on GPU)")
    seed: int = Field(0, description="seed of the document shuffle")
    batch_size: int = Field(8, ge=1, description="sequences per block forward")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="dtype of the block forwards over calibration data; auto: bfloat16 where the hardware has it"
    )


class EvalConfig(_Strict):
    ppl: list[str] = Field(default_factory=lambda: ["builtin"], description="perplexity texts; [] for none")
    seqlen: int = Field(512, ge=16, description="tokens per evaluation window")
    max_windows: int | None = Field(64, ge=1, description="windows scored per text (the first ones)")
    batch_size: int = Field(8, ge=1, description="windows per forward")
    tasks: list[str] = Field(
        default_factory=lambda: list(BUILTIN_TASKS),
        description="lm-eval tasks: the built-in " + ", ".join(BUILTIN_TASKS) + " (offline), or standard names (need the hub); [] for none",
    )
    limit: int | None = Field(None, ge=1, description="items per task (the first ones); all if unset")
    task_batch_size: int = Field(16, ge=1, description="lm-eval requests per forward")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        names = [t.strip() for t in v]
        if any(not t for t in names) or len(set(names)) != len(names):
            raise ValueError("task names must be non-empty and each given once")
        return names


class JobConfig(_Strict):
    model: str = Field(..., description="hub id, local directory, .gguf file or built-in alias")
    output: str = Field(..., description="job directory")
    quant: QuantConfig = Field(default_factory=QuantConfig)
    calib: CalibConfig = Field(default_factory=CalibConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stages: list[StageName] = Field(
        default_factory=lambda: ["layerwise"], description="stages to run, in order: layerwise, blockwise, global"
    )
    from_pivot: str | None = Field(None, description="start from this pivot directory instead of the layer-wise stage")
    plan: PlanSettings = Field(default_factory=PlanSettings, description="mixed precision: a budget (bpw or memory_gb) or a plan file")
    blockwise: BlockwiseSettings = Field(default_factory=BlockwiseSettings)
    global_: GlobalSettings = Field(default_factory=GlobalSettings, alias="global")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    strict: bool = Field(
        False, description="stop at the first warning (a raised damping, a layer refinement cannot train, ...) instead of recording it and going on"
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _check_stages(self) -> "JobConfig":
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ValueError(f"stages: each stage at most once, in the order {', '.join(STAGES)}")
        if self.from_pivot is not None and "layerwise" in self.stages:
            raise ValueError("stages: a job that starts from a pivot refines it; drop 'layerwise' (e.g. --stages blockwise,global)")
        if self.from_pivot is None and self.stages[0] != "layerwise":
            raise ValueError("stages: refinement needs a quantized model; start with 'layerwise' or pass --from-pivot")
        if self.from_pivot is not None and (self.plan.mixed or self.plan.file):
            raise ValueError("plan: a job that refines a pivot keeps the pivot's formats; drop the plan budget or file")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)

    def for_device(self, device: str) -> "JobConfig":
        """The defaults that depend on the machine filled in (``device``: the
        resolved one, ``cpu`` or ``cuda[:N]``), and files made absolute, so
        job.yaml is complete and `onecomp resume` works from any directory."""
        seqlen = self.calib.seqlen or (2048 if device.startswith("cuda") else 512)
        update: dict[str, Any] = {"calib": self.calib.model_copy(update={"seqlen": seqlen}), "device": device}
        if self.from_pivot is not None:
            update["from_pivot"] = str(Path(self.from_pivot).resolve())
        files = {k: str(Path(v).resolve()) for k in ("file", "measurement") if (v := getattr(self.plan, k)) is not None}
        if files:
            update["plan"] = self.plan.model_copy(update=files)
        return self.model_copy(update=update)

    def result_fingerprint_fields(self) -> dict[str, Any]:
        """The settings the compressed result depends on (not where it is written)."""
        data = self.model_dump(mode="json", by_alias=True)
        data.pop("output")
        data.pop("eval")
        data.pop("strict")  # changes whether the job stops, not what it computes: resume it either way
        data["quant"]["qep"].pop("cache_gb")  # see RESULT_NEUTRAL
        data["device"] = data["device"].split(":")[0]  # which GPU does not change the result
        return data


# Settings that trade memory for time without changing what a job computes: a
# resume with other values continues the same job (and a job fingerprinted
# before they were left out of the fingerprint still matches).
RESULT_NEUTRAL = frozenset({"quant.qep.cache_gb"})


def format_validation_error(err: ValidationError, where: str = "") -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    prefix = f"{where}: " if where else ""
    return prefix + "; ".join(parts)


def read_yaml_mapping(path: Path, what: str, expected: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; unreadable, invalid or other content ends in one line."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise OneCompError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise OneCompError(f"{what} {path} is not a text file; give a YAML file") from None
    except yaml.YAMLError as exc:
        raise OneCompError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise OneCompError(f"{what} {path} must be {expected}")
    return data


def load_job_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "config", "a mapping of job settings")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: values in ``override`` win; nested mappings merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_job_config(data: dict[str, Any], where: str = "") -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise OneCompError(format_validation_error(err, where)) from None
