"""Registry of layer-wise methods: name -> options schema + quantize function.

A method turns one weight (and, if it needs data, its input Hessian) into a
format-specific result and the exact format spec that stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from onecomp.algorithms.gptq import GPTQSettings, gptq_quantize, gptq_quantize_formats
from onecomp.algorithms.quant_grid import ClipSearch
from onecomp.algorithms.rtn import rtn_quantize
from onecomp.formats.base import FormatSpec
from onecomp.formats.intq import IntFormat


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RTNOptions(MethodOptions):
    mse: bool = Field(False, description="search a clipped range per group that minimizes the rounding error")


class GPTQOptions(MethodOptions):
    act_order: bool = Field(True, description="quantize columns in order of decreasing Hessian diagonal")
    static_groups: bool = Field(True, description="with act-order: group parameters from the original column order (no group index stored)")
    mse: bool = Field(True, description="clip search for each group's range")
    damp: float = Field(0.01, gt=0, description="damping as a fraction of mean(diag H); grows x10 on Cholesky failure")
    block_size: int = Field(128, ge=1, description="columns per lazy-update block")

    def settings(self) -> GPTQSettings:
        return GPTQSettings(
            act_order=self.act_order,
            static_groups=self.static_groups,
            damp=self.damp,
            block_size=self.block_size,
            clip=ClipSearch() if self.mse else None,
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
    quantize_many: QuantizeManyFn | None = None  # several formats of one weight at once (faster measurement)
    row_separable: bool = False  # each output channel is quantized on its own (the planner may measure a sample of rows)

    def quantize_formats(
        self, weight: torch.Tensor, hessian: torch.Tensor | None, fmts: list[FormatSpec], options: Any
    ) -> list[tuple[Any, FormatSpec]]:
        """The method's result for each format; the same as calling :attr:`quantize` on each."""
        if self.quantize_many is not None:
            return self.quantize_many(weight, hessian, fmts, options)
        return [self.quantize(weight, hessian, f, options) for f in fmts]


def _int_spec(fmt: FormatSpec) -> IntFormat:
    if not isinstance(fmt, IntFormat):
        raise TypeError(f"this method produces integer formats, not {fmt.name!r}")
    return fmt


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
    "rtn": Method("rtn", RTNOptions, False, _rtn, "round to nearest (no calibration data)", _rtn_spec, row_separable=True),
    "gptq": Method("gptq", GPTQOptions, True, _gptq, "GPTQ with Hessian error feedback", _gptq_spec, _gptq_many, row_separable=True),
}


def get_method(name: str) -> Method:
    from onecomp.errors import OneCompError

    if name not in METHODS:
        raise OneCompError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]
