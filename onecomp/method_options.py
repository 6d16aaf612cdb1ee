"""What a job's ``quant:`` section names: each method's options schema and the
uniform format its bits and group size ask for. Free of torch and of the
algorithms, so a job's settings validate without them; ``methods`` adds the
quantizers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from onecomp.formats.base import FormatSpec
from onecomp.formats.intq import IntFormat
from onecomp.formats.lords import LoRDSFormat
from onecomp.formats.sign_factor import SignFactorFormat

if TYPE_CHECKING:
    from onecomp.algorithms.gptq import GPTQSettings
    from onecomp.algorithms.lords import LoRDSSettings
    from onecomp.algorithms.sign_factor import SignFactorSettings


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
        from onecomp.algorithms.gptq import GPTQSettings
        from onecomp.algorithms.quant_grid import ClipSearch

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
        from onecomp.algorithms.sign_factor import SignFactorSettings

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
        import torch

        from onecomp.algorithms.lords import LoRDSSettings

        return LoRDSSettings(
            iterations=self.iterations, error_feedback=self.error_feedback, act_order=self.act_order, damp=self.damp,
            search_grid=self.search_grid, search_rounds=self.search_rounds, solve_dtype=getattr(torch, self.solve_dtype),
        )


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


def _lords_format(bits: "int | float | None", group_size: int, _sym: bool, opts: LoRDSOptions) -> LoRDSFormat:
    if group_size <= 0:
        raise ValueError("lords sizes its low-rank scale by a block size (group_size > 0, e.g. 128), not per channel")
    return LoRDSFormat(bits=_whole_bits(bits, "lords codes"), block=group_size, codebook=opts.codebook)


FormatFn = Callable[["int | float | None", int, bool, Any], FormatSpec]  # (bits, group size, sym, options) -> the uniform format


class MethodSchema(BaseModel):
    """A method as a job's settings name it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    options: type[MethodOptions]
    format_for: FormatFn
    description: str


METHOD_SCHEMAS: dict[str, MethodSchema] = {
    m.name: m
    for m in (
        MethodSchema(name="rtn", options=RTNOptions, format_for=_int_format, description="round to nearest (no calibration data)"),
        MethodSchema(name="gptq", options=GPTQOptions, format_for=_int_format, description="GPTQ with Hessian error feedback"),
        MethodSchema(name="dbf", options=SignFactorOptions, format_for=_dbf_format, description="double binary factorization (two sign matrices, three scale vectors)"),
        MethodSchema(name="mdbf", options=MDBFOptions, format_for=_mdbf_format, description="multi-envelope binary factorization (rank-l magnitude envelopes)"),
        MethodSchema(name="lords", options=LoRDSOptions, format_for=_lords_format, description="codes times a low-rank continuous scale (LoRDS)"),
    )
}
