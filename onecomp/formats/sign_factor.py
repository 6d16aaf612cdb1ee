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

import torch
from pydantic import Field
from torch import nn

from onecomp.algorithms.sign_factor import SignFactorResult, SignPath
from onecomp.formats.base import FormatSpec, TrainingFootprint, register_format
from onecomp.formats.packing import pack_codes, packed_nbytes, unpack_codes

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
        if len(result.paths) != self.paths or result.envelope != self.envelope:
            raise ValueError(f"{self.label()}: the result has {len(result.paths)} paths of envelope {result.envelope}")
        ps = result.paths

        def signs(mats: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([pack_codes((s > 0).to(torch.int64), 1) for s in mats])

        def halves(mats: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(mats).to(torch.float16).contiguous()

        out = {
            "sign_f": signs([p.sign_f for p in ps]),
            "sign_g": signs([p.sign_g for p in ps]),
            "env_out": halves([p.p_f for p in ps]),
            "env_mid_in": halves([p.p_g if self.envelope > 1 else p.q_f * p.p_g for p in ps]),
            "env_in": halves([p.q_g for p in ps]),
        }
        if self.envelope > 1:
            out["env_mid_out"] = halves([p.q_f for p in ps])
        return out

    def make_module(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        return SignFactorLinear(self.resolved(out_features, in_features), in_features, out_features, bias)


class SignFactorLinear(nn.Module):
    """Linear layer computed as two sign matmuls with envelope scalings per path
    (torch reference path); the dense weight is never formed in forward."""

    def __init__(self, spec: SignFactorFormat, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.spec = spec
        self.in_features, self.out_features = in_features, out_features
        n, m, p, l = out_features, in_features, spec.paths, spec.envelope
        r = spec.middle_dim(n, m)
        self.rank = r
        self.register_buffer("sign_f", torch.zeros(p, packed_nbytes(n * r, 1), dtype=torch.uint8))
        self.register_buffer("sign_g", torch.zeros(p, packed_nbytes(r * m, 1), dtype=torch.uint8))
        self.register_buffer("env_out", torch.zeros(p, n, l, dtype=torch.float16))
        if l > 1:
            self.register_buffer("env_mid_out", torch.zeros(p, r, l, dtype=torch.float16))
        self.register_buffer("env_mid_in", torch.zeros(p, r, l, dtype=torch.float16))
        self.register_buffer("env_in", torch.zeros(p, m, l, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def signs(self, dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """±1 sign matrices per path: (n x r) and (r x m)."""
        n, m, r = self.out_features, self.in_features, self.rank

        def unpack(packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
            bits = unpack_codes(packed, 1, rows * cols).view(rows, cols)
            return bits.to(dtype) * 2 - 1

        return [unpack(s, n, r) for s in self.sign_f], [unpack(s, r, m) for s in self.sign_g]

    def mid_out(self) -> torch.Tensor:
        if self.spec.envelope > 1:
            return self.env_mid_out
        return torch.ones_like(self.env_mid_in)

    def paths(self) -> list[SignPath]:
        sf, sg = self.signs()
        mid_out = self.mid_out().float()
        return [
            SignPath(sf[p], self.env_out[p].float(), mid_out[p], sg[p], self.env_mid_in[p].float(), self.env_in[p].float())
            for p in range(self.spec.paths)
        ]

    def dequantize(self) -> torch.Tensor:
        return sum(path.dense() for path in self.paths())  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_factor_forward(x, *self.signs(x.dtype), self.env_out, self.mid_out(), self.env_mid_in, self.env_in, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.spec.label()}, rank={self.rank}"


def sign_factor_forward(
    x: torch.Tensor,
    sign_f: list[torch.Tensor],
    sign_g: list[torch.Tensor],
    env_out: torch.Tensor,
    env_mid_out: torch.Tensor,
    env_mid_in: torch.Tensor,
    env_in: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """y = Σ_p Σ_j P_F[:, j] ⊙ S_F (Q_F[:, j] ⊙ t),  t = Σ_i P_G[:, i] ⊙ S_G (Q_G[:, i] ⊙ x).

    The envelope columns are stacked as a batch dimension, so each sign matrix is
    one matmul over l inputs at once."""
    dtype = x.dtype
    flat = x.reshape(-1, x.shape[-1])
    y = None
    for p in range(len(sign_f)):
        scaled = flat.unsqueeze(1) * env_in[p].T.to(dtype).unsqueeze(0)  # (T, l, m)
        t = ((scaled @ sign_g[p].T) * env_mid_in[p].T.to(dtype).unsqueeze(0)).sum(1)  # (T, r)
        mid = t.unsqueeze(1) * env_mid_out[p].T.to(dtype).unsqueeze(0)  # (T, l, r)
        out = ((mid @ sign_f[p].T) * env_out[p].T.to(dtype).unsqueeze(0)).sum(1)  # (T, n)
        y = out if y is None else y + out
    assert y is not None
    if bias is not None:
        y = y + bias.to(dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])
