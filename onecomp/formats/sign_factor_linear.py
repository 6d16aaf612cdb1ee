"""The binary-factor format's tensors and its inference module (torch reference path)."""

from __future__ import annotations

import torch
from torch import nn

from onecomp.algorithms.sign_factor import SignFactorResult, SignPath
from onecomp.formats.packing import pack_codes, packed_nbytes, unpack_codes
from onecomp.formats.sign_factor import SignFactorFormat


def pack_sign_factor(spec: SignFactorFormat, result: SignFactorResult) -> dict[str, torch.Tensor]:
    """The tensors a binary-factor layer stores: signs packed 8 per byte, envelopes in float16."""
    if len(result.paths) != spec.paths or result.envelope != spec.envelope:
        raise ValueError(f"{spec.label()}: the result has {len(result.paths)} paths of envelope {result.envelope}")
    ps = result.paths

    def signs(mats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([pack_codes((s > 0).to(torch.int64), 1) for s in mats])

    def halves(mats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(mats).to(torch.float16).contiguous()

    out = {
        "sign_f": signs([p.sign_f for p in ps]),
        "sign_g": signs([p.sign_g for p in ps]),
        "env_out": halves([p.p_f for p in ps]),
        "env_mid_in": halves([p.p_g if spec.envelope > 1 else p.q_f * p.p_g for p in ps]),
        "env_in": halves([p.q_g for p in ps]),
    }
    if spec.envelope > 1:
        out["env_mid_out"] = halves([p.q_f for p in ps])
    return out


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
