"""Registry of layer-wise methods: name -> options schema + quantize function.

A method turns one weight (and, if it needs data, its input Hessian) into a
format-specific result and the exact format spec that stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from onecomp.algorithms.gptq import GPTQSettings, gptq_quantize, gptq_quantize_formats
from onecomp.algorithms.quant_grid import ClipSearch
from onecomp.algorithms.lords import LoRDSJob, LoRDSSettings, lords_quantize, lords_quantize_many, scale_lords_rows
from onecomp.algorithms.row_weights import row_scale
from onecomp.algorithms.rtn import rtn_quantize
from onecomp.algorithms.sign_factor import SignFactorSettings, scale_output_rows, sign_factor_quantize
from onecomp.formats.base import FormatSpec, default_candidates
from onecomp.formats.intq import IntFormat
from onecomp.formats.lords import LoRDSFormat
from onecomp.formats.sign_factor import SignFactorFormat


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RTNOptions(MethodOptions):
    mse: bool = Field(False, description="search a clipped range per group that minimizes the rounding error")


class GPTQOptions(MethodOptions):
    act_order: bool = Field(True, description="quantize columns in order of decreasing Hessian diagonal")
    static_groups: bool = Field(True, description="with act-order: group parameters from the original column order (no group index stored)")
    mse: bool = Field(True, description="clip search for each group's range")
    damp: float = Field(
        0.1, gt=0, description="damping as a fraction of mean(diag H); grows x10 on Cholesky failure (0.1: measured, docs/notes/benchmarks-notebook.md)"
    )
    block_size: int = Field(128, ge=1, description="columns per lazy-update block")

    def settings(self) -> GPTQSettings:
        return GPTQSettings(
            act_order=self.act_order,
            static_groups=self.static_groups,
            damp=self.damp,
            block_size=self.block_size,
            clip=ClipSearch() if self.mse else None,
        )


_WEIGHTING = (
    "weight each output channel's error by E[g^2]^x (g: the loss gradient at the layer's outputs, from a gradient pass "
    "over plan.grad_samples calibration sequences); 1: the second-order loss, 0: off"
)


class RowWeightedOptions(MethodOptions):
    """Options of methods whose rows share factors, so weighting rows by their
    loss gradients changes the fit (``Method.scale_rows``)."""

    output_weighting: float = Field(0.5, ge=0, le=1, description=_WEIGHTING)


class SignFactorOptions(RowWeightedOptions):
    iterations: int = Field(20, ge=0, description="outer ADMM rounds of the factor fit")
    inner: int = Field(3, ge=1, description="ADMM iterations per factor update")
    reg: float = Field(0.03, ge=0, description="ridge on the factor normal equations, x mean(diag)")
    power_iters: int = Field(6, ge=1, description="iterations of each envelope's truncated SVD")
    hessian_rounds: int = Field(3, ge=0, description="closed-form refinement of DBF's float vectors against the full input Hessian")
    sign_rounds: int = Field(2, ge=0, description="passes re-choosing DBF's signs against the input Hessian (output rows by coordinate descent, input columns with GPTQ-style error feedback); a second pass measured 4-7% lower layer error")
    row_sweeps: int = Field(2, ge=0, description="coordinate-descent sweeps over each output row's signs in a sign pass (0: least-squares signs only)")
    weighting: Literal["diagonal", "hessian"] = Field(
        "diagonal", description="what the factor fit minimizes: W·diag(√diag H) in Frobenius norm, or the output error tr(E H Eᵀ) (slower)"
    )
    damp: float = Field(
        0.3, gt=0, description="damping of the input Hessian in the sign pass and the hessian weighting, x mean(diag H) (0.3: lowest error under held-out H, docs/notes/benchmarks-notebook.md)"
    )
    seed: int = Field(0, description="seed of the random parts of the start")

    def settings(self) -> SignFactorSettings:
        return SignFactorSettings(
            iterations=self.iterations, inner=self.inner, reg=self.reg, power_iters=self.power_iters,
            hessian_rounds=self.hessian_rounds, sign_rounds=self.sign_rounds, row_sweeps=self.row_sweeps, weighting=self.weighting, damp=self.damp, seed=self.seed,
        )


class MDBFOptions(SignFactorOptions):
    """Defaults measured on SmolLM2 layers at 2 bits per weight (docs/notes/benchmarks-notebook.md):
    four rank-1 paths fit better than one path of a rank-2 envelope, and than one
    DBF path, at the same rate."""

    envelope: int = Field(1, ge=1, le=16, description="rank l of each factor's magnitude envelope (1: DBF-form paths)")
    paths: int = Field(4, ge=1, le=8, description="sign-factor products summed, each fit to what the others leave")


class LoRDSOptions(RowWeightedOptions):
    codebook: Literal["int", "nf"] = Field("nf", description="code levels: NormalFloat (measured better at 3 bits) or symmetric integers")
    iterations: int = Field(8, ge=0, description="rounds alternating the codes and the low-rank scale")
    error_feedback: bool = Field(True, description="codes by GPTQ error feedback on the input Hessian (else nearest level)")
    act_order: bool = Field(True, description="with error feedback: columns in order of decreasing Hessian diagonal")
    damp: float = Field(0.01, gt=0, description="GPTQ damping as a fraction of mean(diag H)")
    output_weighting: float = Field(0.0, ge=0, le=1, description=_WEIGHTING + " (off: not yet measured on whole models)")
    search_grid: int = Field(15, ge=0, description="factors tried by each per-row and per-column rescaling search of the scale init (<= 1: no search)")
    search_rounds: int = Field(2, ge=0, description="column-then-row rescaling search alternations after the row shrink")
    solve_dtype: Literal["float64", "float32"] = Field("float64", description="dtype of the factor solves and the objective")

    def settings(self) -> LoRDSSettings:
        return LoRDSSettings(
            iterations=self.iterations, error_feedback=self.error_feedback, act_order=self.act_order, damp=self.damp,
            search_grid=self.search_grid, search_rounds=self.search_rounds, solve_dtype=getattr(torch, self.solve_dtype),
        )


QuantizeFn = Callable[[torch.Tensor, "torch.Tensor | None", FormatSpec, Any], tuple[Any, FormatSpec]]
QuantizeManyFn = Callable[[torch.Tensor, "torch.Tensor | None", list[FormatSpec], Any], list[tuple[Any, FormatSpec]]]
SpecFn = Callable[[FormatSpec, Any], FormatSpec]
FormatFn = Callable[["int | float | None", int, bool, Any], FormatSpec]  # (bits, group size, sym, options) -> the uniform format


@dataclass(frozen=True)
class Method:
    name: str
    options: type[MethodOptions]
    needs_hessian: bool
    quantize: QuantizeFn
    description: str
    stored_spec: SpecFn  # the exact spec the method stores for a requested format (what the planner budgets)
    format_for: FormatFn  # the uniform format a job's quant settings ask this method for
    formats: tuple[type[FormatSpec], ...]  # the format kinds it produces (its planner candidates)
    quantize_many: QuantizeManyFn | None = None  # several formats of one weight at once (faster measurement)
    # The planner may measure a sample of a layer's output channels: exactly when
    # each channel is quantized on its own (GPTQ, RTN), approximately when the
    # rows share only a small factor fitted on the sample (LoRDS's rank-r A).
    row_sampling: bool = False
    # The result for diag(s)·W from the result for W, for formats with a free
    # per-row scale: lets the stage weight rows by their loss gradients (the
    # method's options then carry ``output_weighting``). None: rows are solved
    # independently, so weighting them changes nothing.
    scale_rows: Callable[[Any, torch.Tensor], Any] | None = None
    # Cheaper options for the planner's measurement: a fit a little worse than
    # the job's (fewer rounds of a fit that keeps its best iterate), so the
    # estimate errs on the pessimistic side. None: the planner measures with the
    # options the job quantizes with.
    measure_options: Callable[[Any], Any] | None = None
    # Labels of other methods' formats the planner also considers by default for
    # this method's jobs: those measured to win in a mixed plan (docs/notes/benchmarks-notebook.md).
    extra_candidates: tuple[str, ...] = ()
    # The planner's default candidates of this method's own formats for its
    # options (e.g. LoRDS's codebook). None: the formats' own candidates.
    own_candidates: Callable[[Any], list[FormatSpec]] | None = None

    def candidate_labels(self, options: Any) -> list[str]:
        """Labels the planner considers for this method's jobs by default: its own
        formats in the settings its options choose (so a budget plans what the
        method's uniform jobs would use), then the extra candidates."""
        own = default_candidates(self.formats) if self.own_candidates is None else self.own_candidates(options)
        return [f.label() for f in own] + list(self.extra_candidates)

    def options_for_measuring(self, options: Any) -> Any:
        return options if self.measure_options is None else self.measure_options(options)

    def quantize_formats(
        self, weight: torch.Tensor, hessian: torch.Tensor | None, fmts: list[FormatSpec], options: Any
    ) -> list[tuple[Any, FormatSpec]]:
        """The method's result for each format; the same as calling :attr:`quantize` on each."""
        if self.quantize_many is not None:
            return self.quantize_many(weight, hessian, fmts, options)
        return [self.quantize(weight, hessian, f, options) for f in fmts]

    def row_weight_exponent(self, options: Any) -> float:
        """The exponent on E[g^2] this method weights output rows by (0: it does not)."""
        if self.scale_rows is None or not isinstance(options, RowWeightedOptions):
            return 0.0
        return options.output_weighting

    def quantize_weighted(
        self, weight: torch.Tensor, hessian: torch.Tensor | None, fmts: list[FormatSpec], options: Any, grad_sq: torch.Tensor | None
    ) -> list[tuple[Any, FormatSpec]]:
        """:meth:`quantize_formats` with the rows weighted by ``grad_sq`` (E[g^2]
        per output channel) where the method uses it: the fit of diag(s)·W, its
        row scale divided back by s. The layer-wise stage and the planner's
        measurement both quantize through here, so they agree."""
        exponent = self.row_weight_exponent(options)
        if exponent <= 0 or grad_sq is None:
            return self.quantize_formats(weight, hessian, fmts, options)
        assert self.scale_rows is not None
        s = row_scale(grad_sq, exponent).to(weight.device)
        return [(self.scale_rows(r, 1.0 / s), spec) for r, spec in self.quantize_formats(weight * s[:, None], hessian, fmts, options)]


def _expect(fmt: FormatSpec, kind: type[FormatSpec], produces: str) -> Any:
    """``fmt`` if it is of the kind the method produces, else the TypeError the planner reports."""
    if not isinstance(fmt, kind):
        raise TypeError(f"this method produces {produces}, not {fmt.name!r}")
    return fmt


def _int_spec(fmt: FormatSpec) -> IntFormat:
    return _expect(fmt, IntFormat, "integer formats")


def _whole_bits(bits: "int | float | None", who: str) -> int:
    b = 4 if bits is None else bits
    if float(b) != int(b):
        raise ValueError(f"{who} take whole bits (2, 3, 4 or 8), not {b:g}; fractional rates are for dbf and mdbf")
    return int(b)


def _int_format(bits: "int | float | None", group_size: int, sym: bool, _opts: Any) -> IntFormat:
    return IntFormat(bits=_whole_bits(bits, "integer formats"), group_size=group_size, sym=sym)


def _dbf_format(bits: "int | float | None", _group: int, _sym: bool, _opts: Any) -> SignFactorFormat:
    return SignFactorFormat(bpw=2.0 if bits is None else float(bits))


def _mdbf_format(bits: "int | float | None", _group: int, _sym: bool, opts: MDBFOptions) -> SignFactorFormat:
    return SignFactorFormat(bpw=2.0 if bits is None else float(bits), envelope=opts.envelope, paths=opts.paths)


def _sign_spec(fmt: FormatSpec, _opts: Any) -> SignFactorFormat:
    return _expect(fmt, SignFactorFormat, "binary-factor formats")


def _sign_factor(weight: torch.Tensor, h: torch.Tensor | None, fmt: FormatSpec, opts: SignFactorOptions) -> tuple[Any, FormatSpec]:
    spec = _sign_spec(fmt, opts).resolved(*weight.shape)
    assert spec.rank is not None
    result = sign_factor_quantize(weight, h, spec.rank, spec.envelope, spec.paths, opts.settings())
    return result, spec


def _lords_format(bits: "int | float | None", group_size: int, _sym: bool, opts: LoRDSOptions) -> LoRDSFormat:
    if group_size <= 0:
        raise ValueError("lords sizes its low-rank scale by a block size (group_size > 0, e.g. 128), not per channel")
    return LoRDSFormat(bits=_whole_bits(bits, "lords codes"), block=group_size, codebook=opts.codebook)


def _lords_candidates(opts: LoRDSOptions) -> list[FormatSpec]:
    """LoRDS's candidates in the codebook the options choose (NormalFloat by default)."""
    return [f.model_copy(update={"codebook": opts.codebook}) for f in LoRDSFormat.candidates()]


def _lords_spec(fmt: FormatSpec, _opts: LoRDSOptions) -> LoRDSFormat:
    return _expect(fmt, LoRDSFormat, "low-rank-scaled codes")


def _lords(weight: torch.Tensor, h: torch.Tensor | None, fmt: FormatSpec, opts: LoRDSOptions) -> tuple[Any, FormatSpec]:
    spec = _lords_spec(fmt, opts).resolved(*weight.shape)
    result = lords_quantize(weight, h, spec.bits, spec.block, spec.codebook, opts.settings(), rank=spec.rank)
    return result, spec


def _lords_many(weight: torch.Tensor, h: torch.Tensor | None, fmts: list[FormatSpec], opts: LoRDSOptions) -> list[tuple[Any, FormatSpec]]:
    specs = [_lords_spec(f, opts).resolved(*weight.shape) for f in fmts]
    jobs = [LoRDSJob(s.bits, s.block, s.codebook, s.rank) for s in specs]
    return list(zip(lords_quantize_many(weight, h, jobs, opts.settings()), specs))


# What the planner measures LoRDS with: 3 of its rounds (rounds 1-3 give most
# of the gain), the init's rescaling searches on every other grid point, one
# alternation, and float32 solves (the same errors as float64 to 3 digits). On
# SmolLM2 layers its error is a few percent above the full fit's, at a quarter
# to a third of the time; docs/notes/benchmarks-notebook.md.
LORDS_MEASURE_ROUNDS = 3


def _lords_measure(opts: LoRDSOptions) -> LoRDSOptions:
    grid = opts.search_grid if opts.search_grid <= 1 else (opts.search_grid + 1) // 2  # 15 -> 8: every other point
    return opts.model_copy(update={
        "iterations": min(opts.iterations, LORDS_MEASURE_ROUNDS), "search_grid": grid,
        "search_rounds": min(opts.search_rounds, 1), "solve_dtype": "float32",
    })


def _rtn(weight: torch.Tensor, _h: torch.Tensor | None, fmt: FormatSpec, opts: RTNOptions) -> tuple[Any, FormatSpec]:
    spec = _int_spec(fmt)
    result = rtn_quantize(weight, spec.bits, spec.group_size, spec.sym, ClipSearch() if opts.mse else None)
    return result, spec.model_copy(update={"g_idx": False})


def _rtn_spec(fmt: FormatSpec, _opts: RTNOptions) -> FormatSpec:
    return _int_spec(fmt).model_copy(update={"g_idx": False})


def _gptq_spec(fmt: FormatSpec, opts: GPTQOptions) -> FormatSpec:
    spec = _int_spec(fmt)
    dynamic = opts.act_order and not opts.static_groups and spec.group_size > 0
    return spec.model_copy(update={"g_idx": dynamic})


def _gptq(weight: torch.Tensor, h: torch.Tensor | None, fmt: FormatSpec, opts: GPTQOptions) -> tuple[Any, FormatSpec]:
    spec = _int_spec(fmt)
    assert h is not None
    result = gptq_quantize(weight, h, spec.bits, spec.group_size, spec.sym, opts.settings())
    return result, spec.model_copy(update={"g_idx": result.g_idx is not None})


def _gptq_many(weight: torch.Tensor, h: torch.Tensor | None, fmts: list[FormatSpec], opts: GPTQOptions) -> list[tuple[Any, FormatSpec]]:
    specs = [_int_spec(f) for f in fmts]
    assert h is not None
    results = gptq_quantize_formats(weight, h, [(s.bits, s.group_size, s.sym) for s in specs], opts.settings())
    return [(r, s.model_copy(update={"g_idx": r.g_idx is not None})) for r, s in zip(results, specs)]


METHODS: dict[str, Method] = {
    "rtn": Method(
        "rtn", RTNOptions, False, _rtn, "round to nearest (no calibration data)", _rtn_spec, _int_format, (IntFormat,), row_sampling=True
    ),
    "gptq": Method(
        "gptq", GPTQOptions, True, _gptq, "GPTQ with Hessian error feedback", _gptq_spec, _int_format, (IntFormat,), _gptq_many,
        row_sampling=True, extra_candidates=("lords2g128nf", "lords3g128nf", "lords4g128nf"),
    ),
    "dbf": Method(
        "dbf", SignFactorOptions, True, _sign_factor, "double binary factorization (two sign matrices, three scale vectors)",
        _sign_spec, _dbf_format, (SignFactorFormat,), scale_rows=scale_output_rows,
    ),
    "mdbf": Method(
        "mdbf", MDBFOptions, True, _sign_factor, "multi-envelope binary factorization (rank-l magnitude envelopes)",
        _sign_spec, _mdbf_format, (SignFactorFormat,), scale_rows=scale_output_rows,
    ),
    "lords": Method(
        "lords", LoRDSOptions, True, _lords, "codes times a low-rank continuous scale (LoRDS)", _lords_spec, _lords_format, (LoRDSFormat,),
        _lords_many, row_sampling=True, scale_rows=scale_lords_rows, measure_options=_lords_measure, own_candidates=_lords_candidates,
    ),
}


def method_for(fmt: FormatSpec, preferred: Method, options: MethodOptions) -> tuple[Method, MethodOptions]:
    """The method that produces ``fmt``: the job's own when it can, else the first
    registered one for that kind of format (calibrated ones first), with its
    default options. This is what lets one plan mix integer, binary-factor and
    low-rank-scaled layers."""
    from onecomp.errors import OneCompError

    if isinstance(fmt, preferred.formats):
        return preferred, options
    capable = [m for m in METHODS.values() if isinstance(fmt, m.formats)]
    if not capable:
        raise OneCompError(f"no registered method produces the format {fmt.label()}")
    chosen = sorted(capable, key=lambda m: not m.needs_hessian)[0]
    return chosen, chosen.options()


def weights_rows(fmt: FormatSpec, preferred: Method, options: MethodOptions) -> bool:
    """Whether the method that produces ``fmt`` weights its rows by loss gradients
    (so the layer-wise stage needs a gradient pass for that layer)."""
    producer, opts = method_for(fmt, preferred, options)
    return producer.row_weight_exponent(opts) > 0


def get_method(name: str) -> Method:
    from onecomp.errors import OneCompError

    if name not in METHODS:
        raise OneCompError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]
