"""QEP, quantization error propagation (Arai & Ichikawa, 2025).

Plain layer-wise quantization reproduces ``W x̂`` from the inputs ``x̂`` that the
already-quantized layers produce, so the error those layers put into ``x̂`` is
never corrected. QEP first moves the weight toward reproducing the
full-precision output ``W x`` from ``x̂``, then hands that target to the base
quantizer (with the quantized-path Hessian):

    W* = W + α · W · C · (H + λI)⁻¹,   C = 2/N Σ (x − x̂) x̂ᵀ,   H = 2/N Σ x̂ x̂ᵀ

α = 1 is the least-squares solution of min ‖W X − W* X̂‖ (it overfits the
calibration set); α = 0 is plain quantization. λ is a fraction of mean(diag H).

For a layer that writes into the residual stream (o_proj, down_proj), the
LPCD-style residual term (Ichikawa et al., 2025) also asks the layer to cancel the
drift r = h − ĥ already in the stream it adds to: the target becomes
W x + r, giving the extra term  R · (H + λI)⁻¹  with R = 2/N Σ r x̂ᵀ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onecomp.algorithms.gptq import factor_in_place
from onecomp.algorithms.result import Damping


class QEPError(RuntimeError):
    """The damped Hessian could not be factored."""


@dataclass
class QEPCorrection:
    """The corrected float32 weight W* and the damping its solve needed (None when
    α = 0: no solve)."""

    weight: torch.Tensor
    damping: Damping | None


def qep_corrected_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    cross: torch.Tensor,
    alpha: float,
    damp: float,
    residual_cross: torch.Tensor | None = None,
    retries: int = 6,
) -> QEPCorrection:
    """The corrected weight W*; ``cross`` is C (in x in), ``hessian`` is H,
    ``residual_cross`` the optional R (out x in).

    Solved in float64 through a Cholesky factor: the correction is a small
    difference of large terms where inputs are nearly collinear. Damping grows
    x10 until the factorization succeeds; the result says which one it needed.
    """
    if alpha == 0.0:
        return QEPCorrection(weight.float().clone(), None)
    w = weight.to(torch.float64, copy=True)
    mean_diag = float(hessian.diagonal().double().mean().clamp(min=1e-12))
    work = hessian.to(torch.float64, copy=True)  # the only float64 matrix of H's size: factored in place
    for attempt in range(retries):
        if attempt:
            work.copy_(hessian)
        work.diagonal().add_(damp * (10**attempt) * mean_diag)
        if factor_in_place(work):
            used = damp * (10**attempt)
            break
    else:
        raise QEPError(f"QEP: Cholesky failed with damping up to {damp * 10 ** (retries - 1):g} x mean(diag H)")
    chol = work.mT
    # (W C H^-1 + R H^-1)^T = H^-1 (C^T W^T + R^T), H symmetric; C^T W^T a slab of
    # C's columns at a time, so no float64 copy of C exists beside the factor
    rhs = torch.empty(cross.shape[1], w.shape[0], dtype=torch.float64, device=w.device)
    slab = max(1, 2**24 // max(1, cross.shape[0]))
    for i in range(0, cross.shape[1], slab):
        rhs[i : i + slab] = cross[:, i : i + slab].double().T @ w.T
    if residual_cross is not None:
        rhs += residual_cross.double().T
    # two triangular solves in place (L y = rhs, Lᵀ x = y): cholesky_solve would copy the factor
    torch.linalg.solve_triangular(chol, rhs, upper=False, out=rhs)
    torch.linalg.solve_triangular(chol.mT, rhs, upper=True, out=rhs)
    del chol, work
    w.add_(rhs.mul_(alpha).T)  # w is this function's float64 copy
    return QEPCorrection(w.float(), Damping(damp, used))
