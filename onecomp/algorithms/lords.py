"""LoRDS (Tang et al., arXiv 2601.22716): weights as codes on a fixed codebook times
a low-rank scale, W ~= (B @ A) * codebook[codes], B (n x r), A (r x m).

A rank-r scale costs 16*r*(n+m) bits, the same budget as fp16 block scales when
r = n*m / (block*(n+m)), but it is not tied to blocks, so it can follow row and
column magnitude structure that block scales only approximate.

PTQ here (the paper's own PTQ uses Adam on the Frobenius error; this minimizes the
layer's output error tr(E H E^T) with closed-form steps instead):

1. scale init: rank-r truncated SVD of the block-absmax scale matrix, then a
   grid searches over per-row and per-column rescalings, which keep the rank;
2. alternate: codes given S = BA (GPTQ error feedback with a per-element scale
   when a Hessian is given, nearest level otherwise), then B given (codes, A) by
   exact weighted least squares per row, then A given (codes, B) by block-Jacobi
   preconditioned conjugate gradients on the exact quadratic;
3. keep the best iterate, round B and A to fp16 and fit the codes once more to
   the rounded scale, so the stored tensors reproduce the result exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from onecomp.algorithms.gptq import gptq_column_pass, inverse_hessian_cholesky
from onecomp.algorithms.result import Damping
from onecomp.formats.layout import lords_rank

Codebook = Literal["int", "nf"]
CODEBOOKS: tuple[str, ...] = ("int", "nf")
FACTOR_DTYPE = torch.float16
_FP16_MAX = 65504.0
_SCALE_FLOOR_REL = 1e-6  # |S| is clamped to this fraction of max|S| when dividing W by it
_PROX_REL = 1e-9  # proximal ridge of the factor solves, relative to the mean system diagonal


# ---------------------------------------------------------------------------- codebooks


def nf_levels(bits: int) -> torch.Tensor:
    """NormalFloat levels (QLoRA's construction, any width): 2**(b-1) positive and
    2**(b-1)-1 negative normal quantiles plus an exact zero, normalized to [-1, 1].

    The outermost quantile is ``offset``, the mean of 1 - 1/(2(2**b - 1)) and
    1 - 1/(2 * 2**b) (0.9677 for 4 bits, as in QLoRA); float64, so deterministic.
    """
    half = 1 << (bits - 1)
    offset = 1.0 - 0.5 * (1.0 / (2 * ((1 << bits) - 1)) + 1.0 / (2 * (1 << bits)))
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1])
    top = pos[0]
    levels = torch.cat([neg / top, torch.zeros(1, dtype=torch.float64), pos / top]).sort().values
    levels[0], levels[-1] = -1.0, 1.0
    return levels.float()


_LEVELS_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def codebook_levels(bits: int, codebook: str) -> torch.Tensor:
    """The 2**bits sorted float32 levels that code k stands for.

    "int": the integers -2**(b-1) .. 2**(b-1)-1 (code k -> k - 2**(b-1));
    "nf": :func:`nf_levels`.
    """
    key = (bits, codebook)
    if key not in _LEVELS_CACHE:
        if codebook == "int":
            _LEVELS_CACHE[key] = torch.arange(1 << bits, dtype=torch.float32) - float(1 << (bits - 1))
        elif codebook == "nf":
            _LEVELS_CACHE[key] = nf_levels(bits)
        else:
            raise ValueError(f"codebook must be one of {CODEBOOKS}, got {codebook!r}")
    return _LEVELS_CACHE[key].clone()


def init_level(bits: int, codebook: str) -> float:
    """Level that a block's absmax is mapped onto before the shrink search: the largest
    positive level (2**(b-1)-1 for "int", 1 for "nf"), so +absmax and -absmax are both
    representable (the extra "int" level -2**(b-1) lies beyond -absmax).

    Full range is rarely best (a shrunken range rounds the bulk of a block finer), so
    :func:`rescale_search` then picks a per-row factor <= 1; that search covers GPTQ's
    symmetric choice (absmax onto 2**(b-1)-0.5), which measured better than full
    range without a search at every width tried (2-4 bits).
    """
    return float(codebook_levels(bits, codebook).max())


def level_midpoints(levels: torch.Tensor) -> torch.Tensor:
    return (levels[1:] + levels[:-1]) / 2


def nearest_codes(x: torch.Tensor, levels: torch.Tensor, mids: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest level for every element (levels sorted ascending; a value
    exactly halfway goes to the lower level). Works for any codebook, uniform or not."""
    mids = level_midpoints(levels) if mids is None else mids
    return torch.bucketize(x.contiguous(), mids.to(x.device, x.dtype))


def lords_dequantize(codes: torch.Tensor, b: torch.Tensor, a: torch.Tensor, bits: int, codebook: str) -> torch.Tensor:
    """float32 (n x m) weight of stored codes and factors; the one path both the
    quantizer's result and the inference module use, so they agree bit for bit."""
    levels = codebook_levels(bits, codebook).to(codes.device)
    return (b.float() @ a.float()) * levels[codes.long()]


# ---------------------------------------------------------------------------- result and settings


@dataclass(frozen=True)
class LoRDSSettings:
    iterations: int = 8  # outer rounds of (factors, codes)
    damp: float = 0.01  # GPTQ damping, relative to mean(diag H)
    act_order: bool = True
    error_feedback: bool = True  # GPTQ codes when a Hessian is given; False: nearest level
    gptq_block_size: int = 128
    max_damp_retries: int = 6
    a_steps: int = 4  # preconditioned CG steps of the A update per round
    tol: float = 1e-4  # stop when a round improves the best objective by less (relative)
    search_grid: int = 15  # factors tried by each init rescaling search (<= 1: no search)
    search_rounds: int = 2  # column-then-row search alternations after the row shrink
    min_shrink: float = 0.3  # smallest per-row range factor of the first search
    solve_dtype: torch.dtype = torch.float64
    chunk_elems: int = 1 << 24  # bound on the (rows x r x m) temporaries of the B step


@dataclass
class LoRDSResult:
    """Codes in the original column order; B and A are float32 holding fp16 values."""

    codes: torch.Tensor  # (n, m) int64 in [0, 2**bits)
    B: torch.Tensor  # (n, r)
    A: torch.Tensor  # (r, m)
    bits: int
    codebook: str
    info: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.B.shape[1]

    def dequantize(self) -> torch.Tensor:
        return lords_dequantize(self.codes, self.B, self.A, self.bits, self.codebook)


def scale_lords_rows(result: LoRDSResult, scale: torch.Tensor) -> LoRDSResult:
    """The result for diag(scale) · W: B's rows times scale (stored float16 again)."""
    b = (result.B * scale.float().to(result.B.device)[:, None]).to(FACTOR_DTYPE).float()
    return LoRDSResult(result.codes, b, result.A, result.bits, result.codebook, result.info)


# ---------------------------------------------------------------------------- the fixed problem


@dataclass
class _Problem:
    """What stays fixed across rounds: the weight, H (None: plain Frobenius error),
    and, with error feedback, the act-order permutation and inverse Hessian factor."""

    w: torch.Tensor  # float32, dead input columns zeroed
    h: torch.Tensor | None  # solve dtype, dead diagonal set to 1
    levels: torch.Tensor
    mids: torch.Tensor
    perm: torch.Tensor | None = None
    hinv: torch.Tensor | None = None
    damping: Damping | None = None

    def apply_h(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.h is None else x @ self.h

    def diag_h(self) -> torch.Tensor | None:
        return None if self.h is None else torch.diagonal(self.h)

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        return nearest_codes(x, self.levels, self.mids)


def _make_problem(weight: torch.Tensor, hessian: torch.Tensor | None, bits: int, codebook: str, settings: LoRDSSettings) -> _Problem:
    w = weight.float().clone()
    levels = codebook_levels(bits, codebook).to(w.device)
    mids = level_midpoints(levels)
    if hessian is None:
        return _Problem(w=w, h=None, levels=levels, mids=mids)
    h = hessian.to(w.device, settings.solve_dtype).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    prob = _Problem(w=w, h=h, levels=levels, mids=mids)
    if settings.error_feedback:
        hf = h.float()
        prob.perm = torch.argsort(torch.diagonal(hf), descending=True) if settings.act_order else torch.arange(w.shape[1], device=w.device)
        prob.hinv, prob.damping = inverse_hessian_cholesky(hf, settings.damp, settings.max_damp_retries, prob.perm)
    return prob


# ---------------------------------------------------------------------------- scale init


def block_absmax(w: torch.Tensor, block: int) -> torch.Tensor:
    """(n, ceil(m/block)) absmax of contiguous input blocks; the last one may be shorter."""
    n, m = w.shape
    nblocks = -(-m // block)
    padded = torch.nn.functional.pad(w.abs(), (0, nblocks * block - m))
    return padded.view(n, nblocks, block).amax(dim=2)


def init_factors(w: torch.Tensor, block: int, rank: int, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B = U_r S_r^1/2, A = S_r^1/2 V_r^T of the expanded block scale absmax/level.

    The expanded matrix is S_blk E with E the (blocks x m) block indicator, whose rows
    are orthogonal with squared norms equal to the block lengths L; so its SVD is that
    of the small S_blk L^1/2 with right vectors mapped back by E^T L^-1/2: exact, and
    no n x m SVD. Ranks beyond min(n, blocks) add zero components (they stay zero:
    the block scale is already exact there).
    """
    n, m = w.shape
    s_blk = block_absmax(w.double(), block) / level
    lengths = torch.full((s_blk.shape[1],), float(block), dtype=torch.float64, device=w.device)
    lengths[-1] = m - block * (s_blk.shape[1] - 1)
    u, sig, vt = torch.linalg.svd(s_blk * lengths.sqrt(), full_matrices=False)
    k = min(rank, sig.numel())
    root = sig[:k].sqrt()
    b = u[:, :k] * root
    a_blk = root.unsqueeze(1) * vt[:k] / lengths.sqrt()
    a = a_blk[:, torch.arange(m, device=w.device) // block]
    if k < rank:
        b = torch.cat([b, b.new_zeros(n, rank - k)], 1)
        a = torch.cat([a, a.new_zeros(rank - k, m)], 0)
    return b, a


def safe_divisor(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` with its magnitude clamped to >= 1e-6 * max|scale|, sign kept (0 -> +).

    A truncated SVD of a nonnegative matrix, and the least-squares updates after it,
    can leave S = BA tiny or negative in places. Negative entries need nothing: the
    codebooks are (nearly) symmetric, so the codes just flip sign. Tiny ones would make
    W / S overflow; with the clamp those elements take an extreme code, and because
    the dequantized value (and the GPTQ error) always uses the true S, the error there
    is simply counted and fed back, never hidden.
    """
    floor = _SCALE_FLOOR_REL * float(scale.abs().max()) + torch.finfo(scale.dtype).tiny
    sign = torch.where(scale < 0, -1.0, 1.0).to(scale.dtype)
    return sign * scale.abs().clamp(min=floor)


def _best_factors(prob: _Problem, s: torch.Tensor, dim: int, factors: list[float]) -> torch.Tensor:
    """Per row (dim=1) or per column (dim=0) of S, the factor among ``factors`` whose
    scaled S gives the least nearest-level error, weighted by diag(H) if any."""
    weight = prob.diag_h()
    weight = torch.ones(s.shape[1], device=s.device) if weight is None else weight.float()
    best_err = best_f = None
    for f in factors:
        sf = s * f
        e = prob.w - sf * prob.levels[prob.nearest(prob.w / safe_divisor(sf))]
        err = (e * e * weight).sum(dim=dim)
        if best_err is None:
            best_err, best_f = err, torch.full_like(err, f)
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_f = torch.where(better, torch.full_like(best_f, f), best_f)
    return best_f


def rescale_search(prob: _Problem, b: torch.Tensor, a: torch.Tensor, settings: LoRDSSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid searches over diagonal rescalings S -> diag(f) S diag(g): rows of B and
    columns of A, so the rank is kept.

    First a per-row range shrink in [min_shrink, 1] (full block range is rarely
    best), then ``search_rounds`` alternations of per-column and per-row factors in
    [1/2, 2] (1 always among them, so a pass never makes its proxy error worse).
    This is where the block-absmax init is furthest off, and the closed-form
    refinement gets there slowly (one round changes few codes). On random 256x512
    weights, 3 bits, rank 1, no H, it takes the relative error of the init from
    0.075 to 0.039 (Gaussian) and from 0.20 to 0.036 (row x column magnitude
    structure): as low as 40 refinement rounds from the plain init get (0.039,
    0.039), and the rounds after it then go further (0.039, 0.035 after 8).
    """
    if settings.search_grid <= 1:
        return b, a
    s = (b @ a).float()
    f = _best_factors(prob, s, 1, torch.linspace(settings.min_shrink, 1.0, settings.search_grid).tolist())
    b = b * f.to(b.dtype).unsqueeze(1)
    s = s * f.unsqueeze(1)
    both = sorted(set(torch.exp(torch.linspace(-math.log(2), math.log(2), settings.search_grid)).tolist()) | {1.0})
    for _ in range(settings.search_rounds):
        g = _best_factors(prob, s, 0, both)
        a, s = a * g.to(a.dtype), s * g
        f = _best_factors(prob, s, 1, both)
        b, s = b * f.to(b.dtype).unsqueeze(1), s * f.unsqueeze(1)
    return b, a


# ---------------------------------------------------------------------------- codes given the scale


def assign_codes(prob: _Problem, scale: torch.Tensor, gptq_block: int) -> torch.Tensor:
    """Codes for the scale S: nearest level of W/S (the exact minimizer without H),
    or GPTQ error feedback on the per-element grid S * levels."""
    return assign_codes_many([prob], [scale], gptq_block)[0]


def assign_codes_many(probs: list[_Problem], scales: list[torch.Tensor], gptq_block: int) -> list[torch.Tensor]:
    """:func:`assign_codes` for several codebooks and scales of one weight at once.

    With error feedback the problems share W, H and its factor, and GPTQ's rows
    are independent, so their rows are stacked into one pass over the columns:
    the per-column work is what dominates on small layers, and it is paid once.
    """
    if probs[0].hinv is None:
        return [p.nearest(p.w / safe_divisor(s.float())) for p, s in zip(probs, scales)]
    perm = probs[0].perm
    n = probs[0].w.shape[0]
    s_p = torch.cat([s.float()[:, perm] for s in scales])
    d_p = torch.cat([safe_divisor(s.float())[:, perm] for s in scales])
    spans = [(k * n, (k + 1) * n) for k in range(len(probs))]

    def one(x: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = probs[0].nearest(x / d_p[:, j])
        return q, s_p[:, j] * probs[0].levels[q]

    def stacked(x: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [p.nearest(x[lo:hi] / d_p[lo:hi, j]) for p, (lo, hi) in zip(probs, spans)]
        deq = torch.cat([s_p[lo:hi, j] * p.levels[q] for p, q, (lo, hi) in zip(probs, parts, spans)])
        return torch.cat(parts), deq

    column = one if len(probs) == 1 else stacked  # no per-column concatenation when one job runs alone
    codes = gptq_column_pass(probs[0].w[:, perm].repeat(len(probs), 1), probs[0].hinv, column, gptq_block)
    codes = codes[:, torch.argsort(perm)]
    return [codes[lo:hi] for lo, hi in spans]


# ---------------------------------------------------------------------------- factors given the codes


def objective(prob: _Problem, b: torch.Tensor, a: torch.Tensor, qv: torch.Tensor) -> float:
    """tr(E H E^T) (||E||_F^2 without H), E = W - (BA) * Q, in the solve dtype."""
    e = prob.w.to(qv.dtype) - (b.to(qv.dtype) @ a.to(qv.dtype)) * qv
    return float((prob.apply_h(e) * e).sum())


def _pair_gram(weights: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """G[i] = sum_j weights[i, j] f[:, j] f[:, j]^T for every row i, as one matmul: (k, r, r)."""
    r = f.shape[0]
    pairs = (f.unsqueeze(1) * f.unsqueeze(0)).reshape(r * r, -1)
    return (weights @ pairs.T).view(-1, r, r)


def _prox_ridge(g: torch.Tensor) -> float:
    return _PROX_REL * float(torch.diagonal(g, dim1=-2, dim2=-1).mean()) + 1e-300


def _prox_solve(g: torch.Tensor, rhs: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Batched argmin_x x G x^T - 2 rhs x^T + lam |x - old|^2.

    The proximal term keeps singular systems (an all-zero code row, a dead column) at
    their old value, and since x = old is feasible, the objective cannot increase.
    """
    lam = _prox_ridge(g)
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return torch.linalg.solve(g + lam * eye, (rhs + lam * old).unsqueeze(-1)).squeeze(-1)


def update_b(prob: _Problem, qv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, chunk_elems: int) -> torch.Tensor:
    """Exact B given (codes, A): rows are independent in tr(E H E^T), and row i is the
    r x r least-squares system b_i (M_i H M_i^T) = w_i H M_i^T with M_i = A * q_i."""
    w = prob.w.to(qv.dtype)
    rhs = (prob.apply_h(w) * qv) @ a.T
    if prob.h is None:
        g = _pair_gram(qv * qv, a)
    else:
        n, (r, m) = qv.shape[0], a.shape
        step = max(1, chunk_elems // (r * m))
        g = torch.cat([_row_gram(qv[i : i + step], a, prob.h) for i in range(0, n, step)])
    return _prox_solve(g, rhs, b)


def _row_gram(q_rows: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    t = q_rows.unsqueeze(1) * a.unsqueeze(0)  # (rows, r, m)
    return (t @ h) @ t.transpose(1, 2)


def _ridged_cholesky(blocks: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Cholesky factors of blocks + lam I, lam the proximal ridge, raised x100 on the
    rare rounding failure of a singular block."""
    lam = _prox_ridge(blocks)
    eye = torch.eye(blocks.shape[-1], dtype=blocks.dtype, device=blocks.device)
    for _ in range(6):
        chol, info = torch.linalg.cholesky_ex(blocks + lam * eye)
        if not bool((info != 0).any()):
            return lam, chol
        lam *= 100
    raise RuntimeError("LoRDS A-step preconditioner is not positive definite")


def update_a(prob: _Problem, qv: torch.Tensor, b: torch.Tensor, a: torch.Tensor, steps: int) -> torch.Tensor:
    """A given (codes, B): a few block-Jacobi preconditioned CG steps on the exact
    quadratic f(A) = tr(E H E^T).

    With a full H the columns of A are coupled, and the exact solve is an (r*m)^2
    system: too large. Solving with diag(H) only (the per-column r x r blocks) is
    cheap but minimizes a different objective, so it could raise the true one. Using
    those blocks as the preconditioner of CG on the true quadratic keeps the cheap
    solve and, CG being a descent method on a convex quadratic started at the current
    A, never increases tr(E H E^T). Without H the blocks are the exact Hessian and the
    first step is the exact solve.
    """
    w = prob.w.to(qv.dtype)
    diag = prob.diag_h()
    blocks = _pair_gram((qv * qv).T, b.T)  # (m, r, r): sum_i q_ij^2 b_i b_i^T
    if diag is not None:
        blocks = blocks * diag.view(-1, 1, 1)
    lam, precond = _ridged_cholesky(blocks)

    def hess(d: torch.Tensor) -> torch.Tensor:
        return b.T @ (prob.apply_h((b @ d) * qv) * qv) + lam * d

    def solve_blocks(res: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(res.T.unsqueeze(-1), precond).squeeze(-1).T

    resid = w - (b @ a) * qv
    res = b.T @ (prob.apply_h(resid) * qv)  # minus half the gradient in A
    delta = torch.zeros_like(a)
    z = solve_blocks(res)
    p = z
    rz = float((res * z).sum())
    rz0 = rz
    for _ in range(steps):
        if rz <= 1e-24 * rz0 or rz <= 0:
            break
        hp = hess(p)
        php = float((p * hp).sum())
        if php <= 0:
            break
        alpha = rz / php
        delta = delta + alpha * p
        res = res - alpha * hp
        z = solve_blocks(res)
        rz_new = float((res * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return a + delta


def rebalance(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale each rank component (B_k c, A_k / c) so B's and A's entries have equal
    RMS: BA is unchanged, and fp16 then has the same headroom for both factors."""
    n, m = b.shape[0], a.shape[1]
    rb = b.norm(dim=0) / math.sqrt(n)
    ra = a.norm(dim=1) / math.sqrt(m)
    ok = (rb > 0) & (ra > 0)
    c = torch.where(ok, (ra / torch.where(ok, rb, 1.0)).sqrt(), 1.0)
    return b * c, a / c.unsqueeze(1)


def to_fp16_values(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-_FP16_MAX, _FP16_MAX).to(FACTOR_DTYPE).float()


# ---------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class LoRDSJob:
    """One format of a weight for :func:`lords_quantize_many`; ``rank`` None derives it from ``block``."""

    bits: int
    block: int
    codebook: str = "int"
    rank: int | None = None


@dataclass
class _Run:
    """One job's iterate, best point and history while the jobs advance in lockstep."""

    prob: _Problem
    rank: int
    b: torch.Tensor
    a: torch.Tensor
    codes: torch.Tensor | None = None
    best: tuple | None = None
    history: list[float] = field(default_factory=list)
    history_factors: list[float] = field(default_factory=list)
    active: bool = True
    round_start: float = 0.0

    def value(self, codes: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        return self.prob.levels[codes].to(dt)

    def take_codes(self, codes: torch.Tensor, dt: torch.dtype) -> None:
        self.codes = codes
        obj = objective(self.prob, self.b, self.a, self.value(codes, dt))
        self.history.append(obj)
        if self.best is None or obj < self.best[0]:
            self.best = (obj, codes, self.b, self.a)

    def update_factors(self, settings: LoRDSSettings) -> None:
        assert self.codes is not None and self.best is not None
        self.round_start = self.best[0]
        qv = self.value(self.codes, settings.solve_dtype)
        b = update_b(self.prob, qv, self.a, self.b, settings.chunk_elems)
        a = update_a(self.prob, qv, b, self.a, settings.a_steps)
        self.b, self.a = rebalance(b, a)
        obj_f = objective(self.prob, self.b, self.a, qv)
        self.history_factors.append(obj_f)
        if obj_f < self.best[0]:
            self.best = (obj_f, self.codes, self.b, self.a)

    def end_round(self, tol: float) -> None:
        assert self.best is not None
        self.active = self.round_start - self.best[0] >= tol * self.round_start


def lords_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor | None,
    bits: int,
    block: int,
    codebook: str = "int",
    settings: LoRDSSettings = LoRDSSettings(),
    rank: int | None = None,
) -> LoRDSResult:
    """LoRDS of one (n x m) weight; ``rank`` None derives it from ``block``.

    ``info``: "objective" (init, then after each round's code step), "objective_factors"
    (after each round's factor step), "objective_final" (stored fp16 factors),
    "relative_error" (final over tr(W H W^T)), "rank", "damping" (with GPTQ codes: the
    :class:`Damping` the inverse Hessian needed).
    """
    return lords_quantize_many(weight, hessian, [LoRDSJob(bits, block, codebook, rank)], settings)[0]


def lords_quantize_many(
    weight: torch.Tensor, hessian: torch.Tensor | None, jobs: list[LoRDSJob], settings: LoRDSSettings = LoRDSSettings()
) -> list[LoRDSResult]:
    """:func:`lords_quantize` for several formats of one weight, each run the same
    as alone. The runs advance in lockstep so that their code steps share one
    GPTQ pass over the columns (:func:`assign_codes_many`): what makes measuring
    several LoRDS candidates for the planner cheap."""
    for job in jobs:
        if job.codebook not in CODEBOOKS:
            raise ValueError(f"codebook must be one of {CODEBOOKS}, got {job.codebook!r}")
    n, m = weight.shape
    dt = settings.solve_dtype
    base = _make_problem(weight, hessian, jobs[0].bits, jobs[0].codebook, settings)
    runs: list[_Run] = []
    for job in jobs:
        levels = codebook_levels(job.bits, job.codebook).to(base.w.device)
        prob = replace(base, levels=levels, mids=level_midpoints(levels))
        r = lords_rank(n, m, job.block) if job.rank is None else job.rank
        b, a = init_factors(prob.w, job.block, r, init_level(job.bits, job.codebook))
        b, a = rescale_search(prob, b.to(dt), a.to(dt), settings)
        runs.append(_Run(prob, r, b, a))
    _code_step(runs, settings)
    for _ in range(settings.iterations):
        active = [run for run in runs if run.active]
        if not active:
            break
        for run in active:
            run.update_factors(settings)
        _code_step(active, settings)
        for run in active:
            run.end_round(settings.tol)
    results = _finalize(runs, jobs, settings)
    w64 = base.w.to(dt)
    total = float((base.apply_h(w64) * w64).sum())
    for run, result in zip(runs, results):
        result.info.update(
            objective=run.history,
            objective_factors=run.history_factors,
            relative_error=result.info["objective_final"] / max(total, 1e-300),
            rank=run.rank,
        )
        if base.damping is not None:
            result.info["damping"] = base.damping
    return results


def _code_step(runs: list[_Run], settings: LoRDSSettings) -> None:
    codes = assign_codes_many([run.prob for run in runs], [run.b @ run.a for run in runs], settings.gptq_block_size)
    for run, c in zip(runs, codes):
        run.take_codes(c, settings.solve_dtype)


def _finalize(runs: list[_Run], jobs: list[LoRDSJob], settings: LoRDSSettings) -> list[LoRDSResult]:
    """Round each run's best factors to fp16, then keep whichever codes (the best
    iterate's or a re-fit to the rounded scale) give the lower error with the
    stored factors."""
    dt = settings.solve_dtype
    rounded = []
    for run in runs:
        assert run.best is not None
        b, a = rebalance(run.best[2], run.best[3])
        rounded.append((to_fp16_values(b), to_fp16_values(a)))
    refits = assign_codes_many([run.prob for run in runs], [b16 @ a16 for b16, a16 in rounded], settings.gptq_block_size)
    results = []
    for run, job, (b16, a16), refit in zip(runs, jobs, rounded, refits):
        assert run.best is not None
        scored = [(objective(run.prob, b16.to(dt), a16.to(dt), run.prob.levels[c].to(dt)), c) for c in (run.best[1], refit)]
        obj, codes = min(scored, key=lambda t: t[0])
        results.append(LoRDSResult(codes=codes, B=b16, A=a16, bits=job.bits, codebook=job.codebook, info={"objective_final": obj}))
    return results
