"""Registry of layer-wise methods: name -> options schema + quantize function.

A method turns one weight (and, if it needs data, its input Hessian) into a
format-specific result and the exact format spec that stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from onecomp.algorithms.gptq import gptq_quantize, gptq_quantize_formats
from onecomp.algorithms.quant_grid import ClipSearch
from onecomp.algorithms.lords import LoRDSJob, lords_quantize, lords_quantize_many, scale_lords_rows
from onecomp.algorithms.row_weights import row_scale
from onecomp.algorithms.rtn import rtn_quantize
from onecomp.algorithms.sign_factor import scale_output_rows, sign_factor_quantize
from onecomp.formats.base import FormatSpec, default_candidates
from onecomp.formats.intq import IntFormat
from onecomp.formats.lords import LoRDSFormat
from onecomp.formats.sign_factor import SignFactorFormat
from onecomp.method_options import (
    METHOD_SCHEMAS,
    FormatFn,
    GPTQOptions,
    LoRDSOptions,
    MethodOptions,
    RowWeightedOptions,
    RTNOptions,
    SignFactorOptions,
)


QuantizeFn = Callable[[torch.Tensor, "torch.Tensor | None", FormatSpec, Any], tuple[Any, FormatSpec]]
QuantizeManyFn = Callable[[torch.Tensor, "torch.Tensor | None", list[FormatSpec], Any], list[tuple[Any, FormatSpec]]]
SpecFn = Callable[[FormatSpec, Any], FormatSpec]


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


def _sign_spec(fmt: FormatSpec, _opts: Any) -> SignFactorFormat:
    return _expect(fmt, SignFactorFormat, "binary-factor formats")


def _sign_factor(weight: torch.Tensor, h: torch.Tensor | None, fmt: FormatSpec, opts: SignFactorOptions) -> tuple[Any, FormatSpec]:
    spec = _sign_spec(fmt, opts).resolved(*weight.shape)
    assert spec.rank is not None
    result = sign_factor_quantize(weight, h, spec.rank, spec.envelope, spec.paths, opts.settings())
    return result, spec


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


def _method(name: str, needs_hessian: bool, quantize: QuantizeFn, stored_spec: SpecFn, formats: tuple[type[FormatSpec], ...], **more: Any) -> Method:
    """A method from its settings schema (options, uniform format, description) and its quantizers."""
    schema = METHOD_SCHEMAS[name]
    return Method(name, schema.options, needs_hessian, quantize, schema.description, stored_spec, schema.format_for, formats, **more)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _method("rtn", False, _rtn, _rtn_spec, (IntFormat,), row_sampling=True),
        _method(
            "gptq", True, _gptq, _gptq_spec, (IntFormat,), quantize_many=_gptq_many,
            row_sampling=True, extra_candidates=("lords2g128nf", "lords3g128nf", "lords4g128nf"),
        ),
        _method("dbf", True, _sign_factor, _sign_spec, (SignFactorFormat,), scale_rows=scale_output_rows),
        _method("mdbf", True, _sign_factor, _sign_spec, (SignFactorFormat,), scale_rows=scale_output_rows),
        _method(
            "lords", True, _lords, _lords_spec, (LoRDSFormat,), quantize_many=_lords_many, row_sampling=True,
            scale_rows=scale_lords_rows, measure_options=_lords_measure, own_candidates=_lords_candidates,
        ),
    )
}
assert set(METHODS) == set(METHOD_SCHEMAS), "every method a job can name has its quantizers"


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
