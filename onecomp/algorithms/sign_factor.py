"""Binary factorizations: DBF (Boža & Macko, 2025) and its multi-envelope form
MDBF (Ichikawa et al., 2025).

One path approximates W (out n x in m) by F·G with sign-modulated low-rank
factors, k the middle dimension:

    F = S_F ⊙ (P_F Q_Fᵀ),  S_F ∈ {±1}^{n×k}, P_F ∈ ℝ^{n×l}, Q_F ∈ ℝ^{k×l}
    G = S_G ⊙ (P_G Q_Gᵀ),  S_G ∈ {±1}^{k×m}, P_G ∈ ℝ^{k×l}, Q_G ∈ ℝ^{m×l}

With l = 1 this is DBF's diag(a)·S_F·diag(μ)·S_G·diag(b) (μ = Q_F ⊙ P_G), so
inference is two sign matmuls with elementwise scalings in any case. Several
paths add up. The fit follows the papers: importance weighting by the input
second moments, a closed-form truncated-SVD start, then alternating ADMM over
the two factors with the projection "signs times a rank-l envelope". After the
ADMM, rank-1 paths get what the diagonal weighting misses, against the full
input Hessian: a sign pass (output rows by least squares, input columns by
coordinate descent with GPTQ's error feedback), then a closed-form re-solve of
the float vectors with the signs fixed. Each is kept only if it lowers the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from onecomp.algorithms.gptq import inverse_hessian_cholesky


@dataclass(frozen=True)
class SignFactorSettings:
    iterations: int = 20  # outer ADMM rounds (each updates both factors); 60 gain ~1% on SmolLM2 layers
    inner: int = 3  # ADMM iterations per factor update
    reg: float = 0.03  # ridge on the normal equations, x mean(diag)
    power_iters: int = 6  # iterations of the envelope's truncated SVD
    hessian_rounds: int = 3  # closed-form refinement of the float vectors with the full H (l = 1)
    weighting: str = "diagonal"  # "diagonal": fit W·diag(√diag H) (the DBF paper's); "hessian": fit the output error tr(E H Eᵀ)
    damp: float = 0.3  # x mean(diag H), added to H in the sign pass and the "hessian" weighting; 0.3 fits held-out H best
    sign_rounds: int = 2  # passes re-choosing the signs against H (output rows, then input columns with error feedback; l = 1)
    row_sweeps: int = 2  # coordinate-descent sweeps over each output row's signs in a sign pass
    seed: int = 0


@dataclass
class SignPath:
    """One path, F = sign_f ⊙ (p_f q_fᵀ), G = sign_g ⊙ (p_g q_gᵀ); signs are ±1 float32."""

    sign_f: torch.Tensor  # (n, k)
    p_f: torch.Tensor  # (n, l)
    q_f: torch.Tensor  # (k, l)
    sign_g: torch.Tensor  # (k, m)
    p_g: torch.Tensor  # (k, l)
    q_g: torch.Tensor  # (m, l)

    @property
    def rank(self) -> int:
        return self.sign_f.shape[1]

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sign_f * (self.p_f @ self.q_f.T), self.sign_g * (self.p_g @ self.q_g.T)

    def dense(self) -> torch.Tensor:
        f, g = self.factors()
        return f @ g

    def to_float16(self) -> "SignPath":
        """The path as stored: float vectors rounded to float16 (l = 1 keeps μ = q_f ⊙ p_g merged)."""
        if self.p_f.shape[1] == 1:
            mu = (self.q_f * self.p_g).half().float()
            return SignPath(self.sign_f, self.p_f.half().float(), torch.ones_like(mu), self.sign_g, mu, self.q_g.half().float())
        return SignPath(self.sign_f, *(t.half().float() for t in (self.p_f, self.q_f)), self.sign_g, *(t.half().float() for t in (self.p_g, self.q_g)))


@dataclass
class SignFactorResult:
    paths: list[SignPath]
    envelope: int
    info: dict = field(default_factory=dict)  # "damping": the Damping of the sign pass's inverse Hessian, when it ran

    def dequantize(self) -> torch.Tensor:
        return sum(p.dense() for p in self.paths)  # type: ignore[return-value]


def _signs(m: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so every entry is one stored bit."""
    return torch.where(m >= 0, 1.0, -1.0).to(m.dtype)


def _envelope(mag: torch.Tensor, rank: int, iters: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors (P, Q) with P Qᵀ ≈ mag, split √σ on each side.

    Rank 1 is a power iteration from the all-ones vector (the top singular
    vectors of a nonnegative matrix are nonnegative, so it converges from
    there); higher ranks use subspace iteration from a seeded start.
    """
    rows, cols = mag.shape
    if rank == 1:
        v = torch.ones(cols, 1, dtype=mag.dtype, device=mag.device)
        for _ in range(iters):
            u = mag @ v
            u = u / u.norm().clamp_min(1e-30)
            v = mag.T @ u
        sigma = v.norm().clamp_min(1e-30)
        v = v / sigma
        root = sigma.sqrt()
        return u * root, v * root
    width = min(rank + 4, rows, cols)
    basis = torch.randn(cols, width, generator=gen, dtype=mag.dtype).to(mag.device)
    for _ in range(iters):
        q, _ = torch.linalg.qr(mag @ basis)
        basis, _ = torch.linalg.qr(mag.T @ q)
    q, _ = torch.linalg.qr(mag @ basis)
    u, s, vh = torch.linalg.svd(q.T @ mag, full_matrices=False)
    u, s, vh = q @ u[:, :rank], s[:rank], vh[:rank]
    flip = torch.where((u.sum(0) + vh.sum(1)) < 0, -1.0, 1.0).to(u.dtype)  # nonnegative-leaning envelopes
    root = s.sqrt() * flip
    p, q_ = u * root, vh.T * (s.sqrt() * flip)
    if p.shape[1] < rank:  # a factor narrower than the envelope rank: the extra columns are zero
        p, q_ = F.pad(p, (0, rank - p.shape[1])), F.pad(q_, (0, rank - q_.shape[1]))
    return p, q_


def project(m: torch.Tensor, rank: int, iters: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Π(M) = sign(M) ⊙ TSVD_rank(|M|), returned as (signs, P, Q)."""
    p, q = _envelope(m.abs(), rank, iters, gen)
    return _signs(m), p, q


def _assemble(parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    s, p, q = parts
    return s * (p @ q.T)


def _admm(
    x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, rho: float, s: SignFactorSettings, rank: int, gen: torch.Generator
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """ADMM for min ‖Y − X V‖² with V in the sign-times-envelope set, from the
    feasible start Z; returns the projected V and its parts.

    X's columns have unit norm, so ρ = 1 is on the scale of the normal
    equations. The dual starts at zero on every call: each call solves a new
    subproblem (X changed), and a dual carried over from the previous one made
    the iterates diverge on real weights.
    """
    g = x.T @ x
    g.diagonal().add_(s.reg * float(g.diagonal().mean()))
    r = x.T @ y
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    # explicit inverses: one matmul per solve runs ~2x faster than triangular solves
    v = torch.cholesky_inverse(torch.linalg.cholesky(g + rho * eye)) @ (r + rho * z)
    u = torch.zeros_like(v)
    inv_one = torch.cholesky_inverse(torch.linalg.cholesky(g + eye)) if s.inner > 1 else None
    parts = project(v + u, rank, s.power_iters, gen)
    for _ in range(s.inner - 1):
        z = _assemble(parts)
        u = u + v - z
        v = inv_one @ (r + (z - u))
        parts = project(v + u, rank, s.power_iters, gen)
    return _assemble(parts), parts


@dataclass(frozen=True)
class InputMetric:
    """The layer's output-error metric tr(E H Eᵀ), H normalized to mean diagonal 1
    and damped: its Cholesky factor L (H = L Lᵀ, for the whitened F-step) and its
    eigendecomposition (for the G-step's Sylvester equation)."""

    h: torch.Tensor
    chol: torch.Tensor
    eigvals: torch.Tensor
    eigvecs: torch.Tensor

    @classmethod
    def from_hessian(cls, hessian: torch.Tensor, damp: float) -> "InputMetric":
        h = hessian.double()
        h = h / h.diagonal().mean().clamp_min(1e-30)
        h = h + damp * torch.eye(h.shape[0], dtype=h.dtype)
        vals, vecs = torch.linalg.eigh(h)
        return cls(h.float(), torch.linalg.cholesky(h).float(), vals.clamp_min(0).float(), vecs.float())


def _admm_metric(
    f: torch.Tensor, wh: torch.Tensor, z: torch.Tensor, rho: float, s: SignFactorSettings, rank: int, gen: torch.Generator, metric: InputMetric
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The G-step ADMM under tr(E H Eᵀ): each V-update solves the Sylvester
    equation (FᵀF) V H + ρ V = Fᵀ W H + ρ (Z − U) in the two eigenbases."""
    gm = f.T @ f
    gm.diagonal().add_(s.reg * float(gm.diagonal().mean()))
    lam, p = torch.linalg.eigh(gm)
    q, sigma = metric.eigvecs, metric.eigvals
    denom = lam[:, None] * sigma[None, :]
    r = f.T @ wh

    def solve(rhs: torch.Tensor, penalty: float) -> torch.Tensor:
        return p @ (((p.T @ rhs @ q) / (denom + penalty)) @ q.T)

    v = solve(r + rho * z, rho)
    u = torch.zeros_like(v)
    parts = project(v + u, rank, s.power_iters, gen)
    for _ in range(s.inner - 1):
        z = _assemble(parts)
        u = u + v - z
        v = solve(r + (z - u), 1.0)
        parts = project(v + u, rank, s.power_iters, gen)
    return _assemble(parts), parts


def _svd_start(w: torch.Tensor, k: int, gen: torch.Generator, chol: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """U√Σ and √ΣVᵀ of the top-k SVD of W (of W L, un-whitened, with a metric);
    beyond the rank, small random columns (a sign factor can usefully be wider
    than the matrix's rank)."""
    n, m = w.shape
    target = w if chol is None else w @ chol
    u, sv, vh = torch.linalg.svd(target.double(), full_matrices=False)
    top = min(k, sv.numel())
    root = sv[:top].sqrt()
    f, g = (u[:, :top] * root).float(), (root[:, None] * vh[:top]).float()
    if chol is not None:
        g = torch.linalg.solve_triangular(chol, g, upper=False, left=False)  # G L = √ΣVᵀ
    if k > top:
        scale = float(g.norm(dim=1).mean()) * 1e-2
        f = torch.cat([f, float(f.norm(dim=0).mean()) * 1e-2 * torch.randn(n, k - top, generator=gen) / n**0.5], 1)
        g = torch.cat([g, scale * torch.randn(k - top, m, generator=gen) / m**0.5], 0)
    return f, g


def fit_path(
    target: torch.Tensor, k: int, rank: int, s: SignFactorSettings, gen: torch.Generator, metric: InputMetric | None = None
) -> SignPath:
    """Alternating ADMM over F and G for target ≈ F G, in Frobenius norm or,
    with a metric, in the layer's output error tr(E H Eᵀ)."""
    chol = None if metric is None else metric.chol
    f0, g0 = _svd_start(target, k, gen, chol)
    f_parts = project(f0, rank, s.power_iters, gen)
    g_parts = project(g0, rank, s.power_iters, gen)
    f, g = _assemble(f_parts), _assemble(g_parts)
    target_t = (target if chol is None else target @ chol).T
    wh = None if metric is None else target @ metric.h
    for t in range(s.iterations):
        rho = 0.03 + 0.97 * min(1.0, t / max(s.iterations - 3, 1)) ** 3
        # F-step on unit-norm rows of G (of G L); the norms move into F so F G is unchanged
        gl = g if chol is None else g @ chol
        d = gl.norm(dim=1).clamp_min(1e-12)
        g, gl, f = g / d[:, None], gl / d[:, None], f * d
        zt, parts = _admm(gl.T, target_t, f.T, rho, s, rank, gen)
        f, f_parts = zt.T, (parts[0].T, parts[2], parts[1])
        # G-step on unit-norm columns of F
        d = f.norm(dim=0).clamp_min(1e-12)
        f, g = f / d, g * d[:, None]
        f_parts = (f_parts[0], f_parts[1], f_parts[2] / d[:, None])
        if metric is None:
            g, g_parts = _admm(f, target, g, rho, s, rank, gen)
        else:
            assert wh is not None
            g, g_parts = _admm_metric(f, wh, g, rho, s, rank, gen, metric)
    return SignPath(f_parts[0], f_parts[1], f_parts[2], g_parts[0], g_parts[1], g_parts[2])


def _unweight(path: SignPath, col_scale: torch.Tensor) -> SignPath:
    """Undo the importance weighting target = W · diag(col_scale) on G's input envelope."""
    return SignPath(path.sign_f, path.p_f, path.q_f, path.sign_g, path.p_g, path.q_g / col_scale[:, None])


def _weighted_fit(target: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    d = target - approx
    return float(((d @ hessian) * d).sum())


def refine_dbf_vectors(target: torch.Tensor, path: SignPath, hessian: torch.Tensor, rounds: int) -> SignPath:
    """Closed-form least squares for a, μ, b of an l = 1 path under tr(E H Eᵀ).

    The error is linear in each vector with the other two fixed, so each update
    is an exact minimizer: a per row, b through an (m x m) system, μ through a
    (k x k) one. The objective never increases.
    """
    a, mu, b = path.p_f[:, 0].clone(), (path.q_f * path.p_g)[:, 0].clone(), path.q_g[:, 0].clone()
    sf, sg = path.sign_f, path.sign_g
    h = hessian
    wh = target @ h
    eye_m = torch.eye(h.shape[0], dtype=h.dtype)
    for _ in range(rounds):
        m_rows = (sf * mu) @ (sg * b)  # approx = diag(a) m_rows
        mh = m_rows @ h
        a = (mh * target).sum(1) / (mh * m_rows).sum(1).clamp_min(1e-30)
        n_cols = (a[:, None] * sf * mu) @ sg  # approx = n_cols diag(b)
        lhs = (n_cols.T @ n_cols) * h
        lhs += 1e-9 * float(lhs.diagonal().mean()) * eye_m
        rhs = (n_cols * wh).sum(0)  # diag(Nᵀ W H)
        b = torch.linalg.solve(lhs, rhs)
        left, right = a[:, None] * sf, sg * b  # approx = left diag(μ) right
        rh = right @ h
        lhs_mu = (left.T @ left) * (rh @ right.T)
        lhs_mu += 1e-9 * float(lhs_mu.diagonal().mean()) * torch.eye(lhs_mu.shape[0], dtype=h.dtype)
        rhs_mu = ((left.T @ target) * rh).sum(1)  # diag(Lᵀ W H Rᵀ)
        mu = torch.linalg.solve(lhs_mu, rhs_mu)
    return SignPath(sf, a[:, None], torch.ones_like(mu)[:, None], sg, mu[:, None], b[:, None])


def _row_objective(w: torch.Tensor, rows: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row i, the best scale a_i for ŵ_i = a_i·rows_i and its error under H (up to w_i H w_iᵀ)."""
    ph = rows @ h
    num, den = (ph * w).sum(1), (ph * rows).sum(1).clamp_min(1e-30)
    return num / den, -(num * num) / den


def refine_output_signs(w: torch.Tensor, path: SignPath, h: torch.Tensor, sweeps: int = 2) -> SignPath:
    """Re-choose S_F row by row under tr(E H Eᵀ), the rest fixed (l = 1).

    Rows of W are independent under that metric. Every row first gets the sign
    of its H-weighted least-squares solution (all rows in one solve) if that
    fits better, then coordinate descent over its k signs; a row keeps its old
    signs unless the new ones (with their best a_i) fit better."""
    mu, b = (path.q_f * path.p_g)[:, 0], path.q_g[:, 0]
    nmat = mu[:, None] * path.sign_g * b[None, :]  # ŵ_i = a_i (s_i ⊙ 1) N
    nh = nmat @ h
    gram = nh @ nmat.T
    gram.diagonal().add_(1e-6 * float(gram.diagonal().mean()))
    cand = _signs(torch.linalg.solve(gram, nh @ w.T).T)
    a_old, obj_old = _row_objective(w, path.sign_f @ nmat, h)
    a_new, obj_new = _row_objective(w, cand @ nmat, h)
    better = obj_new < obj_old
    sign_f = torch.where(better[:, None], cand, path.sign_f)
    a, obj = torch.where(better, a_new, a_old), torch.where(better, obj_new, obj_old)
    if sweeps > 0:
        cd = _signs_cd(gram, nh @ w.T, sign_f.T.clone(), sweeps)[0].T
        a_cd, obj_cd = _row_objective(w, cd @ nmat, h)
        better = obj_cd < obj
        sign_f, a = torch.where(better[:, None], cd, sign_f), torch.where(better, a_cd, a)
    return SignPath(sign_f, a[:, None], torch.ones_like(mu)[:, None], path.sign_g, mu[:, None], b[:, None])


def _signs_cd(gram: torch.Tensor, rhs: torch.Tensor, s: torch.Tensor, sweeps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate descent on min ‖t_j − b_j M s_j‖² over signs s_j, for a batch
    of columns at once, given only G = MᵀM and the right-hand sides Mᵀt_j (b_j the
    least-squares scale of the start, refit after).

    Flipping s_ij changes the error by −2 s_ij g_ij + 4 b_j² G_ii, g the gradient,
    so each coordinate is one vectorized test over the batch."""
    b = (s * rhs).sum(0) / (s * (gram @ s)).sum(0).clamp_min(1e-30)
    g = 2 * b * (b * (gram @ s) - rhs)
    diag4 = 4 * gram.diagonal()
    b2 = b * b
    for _ in range(sweeps):
        for i in range(s.shape[0]):
            si = s[i]
            flip = (diag4[i] * b2 - 2 * si * g[i]) < 0
            if bool(flip.any()):
                coef = torch.where(flip, -4 * b2 * si, 0.0)
                g += gram[:, i : i + 1] * coef[None, :]
                s[i] = torch.where(flip, -si, si)
    b = (s * rhs).sum(0) / (s * (gram @ s)).sum(0).clamp_min(1e-30)
    return s, b


def _column_signs_cd(mmat: torch.Tensor, gram: torch.Tensor, t: torch.Tensor, s: torch.Tensor, sweeps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_signs_cd` for explicit targets t and matrix M."""
    return _signs_cd(gram, mmat.T @ t, s, sweeps)


def refine_input_signs(w: torch.Tensor, path: SignPath, hinv_upper: torch.Tensor, block: int = 32, sweeps: int = 2) -> SignPath:
    """Re-choose S_G column by column with GPTQ's error feedback (l = 1).

    Column j of the approximation is b_j·M s_j with M = diag(a) S_F diag(μ).
    Columns go in blocks: a block's sign vectors are improved by coordinate
    descent against their targets (the weight columns plus the feedback of the
    errors already made), then the block's error is compensated on the later
    columns exactly, through the upper Cholesky factor U of H⁻¹:
    W_rest −= E U_bb⁻¹ U_b,rest."""
    a, mu = path.p_f[:, 0], (path.q_f * path.p_g)[:, 0]
    mmat = a[:, None] * path.sign_f * mu[None, :]
    gram = mmat.T @ mmat
    w = w.clone()
    signs = path.sign_g.clone()
    scales = torch.zeros(w.shape[1])
    m = w.shape[1]
    for i1 in range(0, m, block):
        i2 = min(i1 + block, m)
        s, b = _column_signs_cd(mmat, gram, w[:, i1:i2], signs[:, i1:i2].clone(), sweeps)
        signs[:, i1:i2], scales[i1:i2] = s, b
        if i2 < m:
            err = w[:, i1:i2] - (mmat @ s) * b
            ubb = hinv_upper[i1:i2, i1:i2]
            w[:, i2:] -= torch.linalg.solve_triangular(ubb, err, upper=True, left=False) @ hinv_upper[i1:i2, i2:]
    return SignPath(path.sign_f, a[:, None], torch.ones_like(mu)[:, None], signs, mu[:, None], scales[:, None])


def scale_output_rows(result: SignFactorResult, scale: torch.Tensor) -> SignFactorResult:
    """The result for diag(scale) · W: each path's output-side vector a times scale
    (stored float16 again)."""
    s = scale.float().to(result.paths[0].p_f.device)[:, None]
    paths = [SignPath(p.sign_f, p.p_f * s, p.q_f, p.sign_g, p.p_g, p.q_g).to_float16() for p in result.paths]
    return SignFactorResult(paths, result.envelope, result.info)


def sign_factor_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor | None,
    rank: int,
    envelope: int = 1,
    paths: int = 1,
    settings: SignFactorSettings = SignFactorSettings(),
) -> SignFactorResult:
    """Fit ``paths`` sign-factor paths of middle dimension ``rank`` and envelope
    rank ``envelope`` to one weight (out x in); later paths fit the residual."""
    w = weight.float()
    gen = torch.Generator().manual_seed(settings.seed)
    metric, col_scale = None, torch.ones(w.shape[1])
    if hessian is not None and settings.weighting == "hessian":
        metric = InputMetric.from_hessian(hessian, settings.damp)
    elif hessian is not None:
        imp = hessian.float().diagonal().clamp_min(0)
        col_scale = (imp / imp.mean().clamp_min(1e-30)).sqrt() + 1e-3
    fitted: list[SignPath] = []
    residual = w.clone()
    for _ in range(paths):
        path = _unweight(fit_path(residual * col_scale, rank, envelope, settings, gen, metric), col_scale).to_float16()
        fitted.append(path)
        residual = residual - path.dense()
    info: dict = {"rank": rank}
    if hessian is not None and envelope == 1 and (settings.hessian_rounds > 0 or settings.sign_rounds > 0):
        # Every step of the pass sees the same damped H: signs chosen against the raw
        # H of a finite calibration sample fit that sample's directions, not the layer's.
        raw = hessian.float()
        h = raw + settings.damp * float(raw.diagonal().mean()) * torch.eye(raw.shape[0], dtype=raw.dtype)
        hinv = None
        if settings.sign_rounds > 0:
            hinv, info["damping"] = inverse_hessian_cholesky(raw, settings.damp, 6)
        before = _weighted_fit(w, sum(p.dense() for p in fitted), h)  # type: ignore[arg-type]
        for i, path in enumerate(fitted):
            target = w - sum((p.dense() for j, p in enumerate(fitted) if j != i), torch.zeros_like(w))
            candidate = path
            for _ in range(settings.sign_rounds):
                assert hinv is not None
                candidate = refine_input_signs(target, refine_output_signs(target, candidate, h, settings.row_sweeps), hinv)
            if settings.hessian_rounds > 0:
                candidate = refine_dbf_vectors(target, candidate, h, settings.hessian_rounds)
            candidate = candidate.to_float16()
            if _weighted_fit(target, candidate.dense(), h) <= _weighted_fit(target, path.dense(), h):
                fitted[i] = candidate
        info["hessian_gain"] = 1.0 - _weighted_fit(w, sum(p.dense() for p in fitted), h) / max(before, 1e-30)  # type: ignore[arg-type]
    return SignFactorResult(fitted, envelope, info)
