"""Binary-factor weights (DBF, MDBF): y = Σ_paths F (G x) with sign matrices.

Per path with middle dimension r and envelope rank l, the stored tensors are
the two sign matrices (1 bit each entry, packed 8 per byte) and float16
envelope factors: P_F (n x l), Q_F (r x l), P_G (r x l), Q_G (m x l). With l = 1,
Q_F and P_G only appear as their product μ (DBF's middle scaling), so one r-vector
is stored instead of two. Storage per path:

    r(n + m) + 16·(l(n + m) + c·r) bits,  c = 1 if l = 1 else 2l

and r is the largest middle dimension whose total fits the target bits per
weight (every sign and every float counted).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import Field

from onecomp.formats.base import FormatSpec, TrainingFootprint, register_format
from onecomp.formats.layout import packed_nbytes

if TYPE_CHECKING:
    import torch
    from torch import nn

    from onecomp.algorithms.sign_factor import SignFactorResult

_DBF = re.compile(r"^dbf(\d+(?:\.\d+)?)$")
_MDBF = re.compile(r"^mdbf(\d+(?:\.\d+)?)(?:e(\d+))?(?:p(\d+))?$")
CANDIDATE_BPW = (1.5, 2.0, 2.5)


@register_format
class SignFactorFormat(FormatSpec):
    name = "signfactor"

    bpw: float = Field(2.0, gt=0, le=16, description="target bits per weight, every sign and float counted")
    envelope: int = Field(1, ge=1, le=16, description="rank l of each factor's magnitude envelope (1: DBF)")
    paths: int = Field(1, ge=1, le=8, description="sign-factor products summed")
    rank: int | None = Field(None, ge=1, description="middle dimension per path; None: the largest that fits bpw")

    def _mid_floats(self) -> int:
        return 1 if self.envelope == 1 else 2 * self.envelope

    def middle_dim(self, out_features: int, in_features: int) -> int:
        if self.rank is not None:
            return self.rank
        n, m, l = out_features, in_features, self.envelope
        r = int((self.bpw * n * m / self.paths - 16 * l * (n + m)) // ((n + m) + 16 * self._mid_floats()))
        if r < 1:
            raise ValueError(f"{self.label()}: {self.bpw:g} bits per weight cannot hold one sign path of a {n}x{m} weight")
        return r

    def resolved(self, out_features: int, in_features: int) -> "SignFactorFormat":
        """This format with the middle dimension fixed for one shape (what a pivot records)."""
        return self.model_copy(update={"rank": self.middle_dim(out_features, in_features)})

    def _floats(self, n: int, m: int, r: int) -> int:
        return self.envelope * (n + m) + self._mid_floats() * r

    def storage_bits(self, out_features: int, in_features: int) -> int:
        n, m = out_features, in_features
        r = self.middle_dim(n, m)
        return self.paths * (r * (n + m) + 16 * self._floats(n, m, r))

    def storage_bytes(self, out_features: int, in_features: int) -> int:
        n, m = out_features, in_features
        r = self.middle_dim(n, m)
        return self.paths * (packed_nbytes(n * r, 1) + packed_nbytes(r * m, 1) + 2 * self._floats(n, m, r))

    def training_footprint(self, out_features: int, in_features: int) -> TrainingFootprint:
        """The view keeps both sign matrices of every path unpacked in bfloat16 and
        never forms W. Its backward keeps, per token and path, what the envelope
        gradients need (the sign matrices need no gradient, so the matmuls' inputs
        are not kept): the two sign products (l x r and l x n) and, when l > 1, t
        (r), in bfloat16 (see :func:`sign_factor_forward`; checked with
        saved-tensor hooks in the tests)."""
        n, m, l = out_features, in_features, self.envelope
        r = self.middle_dim(n, m)
        return TrainingFootprint(
            view=2 * self.paths * r * (n + m),
            saved=0,
            saved_per_token=2 * self.paths * (l * (r + n) + (r if l > 1 else 0)),
        )

    def label(self) -> str:
        if self.envelope == 1 and self.paths == 1:
            return f"dbf{self.bpw:g}"
        return f"mdbf{self.bpw:g}e{self.envelope}p{self.paths}"

    @classmethod
    def from_label(cls, label: str) -> "SignFactorFormat | None":
        m = _DBF.match(label)
        if m is not None:
            return cls(bpw=float(m.group(1)))
        m = _MDBF.match(label)
        if m is None:
            return None
        return cls(bpw=float(m.group(1)), envelope=int(m.group(2) or 2), paths=int(m.group(3) or 1))

    @classmethod
    def candidates(cls) -> list[FormatSpec]:
        return [cls(bpw=b) for b in CANDIDATE_BPW]

    def pack(self, result: SignFactorResult) -> dict[str, torch.Tensor]:
        from onecomp.formats.sign_factor_linear import pack_sign_factor

        return pack_sign_factor(self, result)

    def make_module(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        from onecomp.formats.sign_factor_linear import SignFactorLinear

        return SignFactorLinear(self.resolved(out_features, in_features), in_features, out_features, bias)


def __getattr__(name: str) -> Any:
    """The inference module and its forward, imported (with torch) only when asked for."""
    if name in ("SignFactorLinear", "sign_factor_forward"):
        from onecomp.formats import sign_factor_linear

        return getattr(sign_factor_linear, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
