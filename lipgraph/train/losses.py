"""Losses: LMT's guarded cross-entropy (global and pairwise "LMT++") and the multi-class hinge.

LMT (Tsuzuku et al. 2018; the original code's ``Lmt``/``LmtFc``): the
non-target logits are raised by a guard so that a correct prediction is pushed to a margin that
certifies radius ``c``. Per example a clipped factor in [0, 1] scales the guard: 0 when misclassified,
1 once the margin already covers the guard. The factor is a constant for the gradient; the gradient
flows through the guard into the Lipschitz estimate and (pairwise) the last-layer rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _onehot(y: torch.Tensor, k: int, like: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, k).to(like.dtype)


def lmt_global_logits(logits: torch.Tensor, y: torch.Tensor, l_f: torch.Tensor, c: float) -> torch.Tensor:
    """Prop. 1 form: guard ``l = sqrt2 c L_F``, ``factor = clip((F_t - max_{i!=t} F_i) / l, 0, 1)``."""
    k = logits.shape[1]
    oh = _onehot(y, k, logits)
    guard = math.sqrt(2.0) * c * l_f
    with torch.no_grad():
        ft = logits.gather(1, y[:, None]).squeeze(1)
        runner = logits.masked_fill(oh.bool(), float("-inf")).max(1).values
        factor = ((ft - runner) / guard.clamp_min(1e-12)).clamp(0.0, 1.0)
    return logits + (1.0 - oh) * factor[:, None] * guard


def pairwise_row_distances(w_last: torch.Tensor) -> torch.Tensor:
    """``D[k, i] = ||w_k - w_i||`` for the rows of the last weight, differentiable (0 on the diagonal)."""
    sq = ((w_last[:, None, :] - w_last[None, :, :]) ** 2).sum(-1)
    # clamp keeps the gradient finite at the zero diagonal (the clamped entries get no gradient).
    return sq.clamp_min(1e-20).sqrt() * (1.0 - torch.eye(w_last.shape[0], dtype=w_last.dtype, device=w_last.device))


def lmt_pairwise_logits(logits: torch.Tensor, y: torch.Tensor, l_h: torch.Tensor, w_last: torch.Tensor,
                        c: float) -> torch.Tensor:
    """Prop. 2 / "LMT++": guards ``l_i = c L_h ||w_t - w_i||``, one factor per example.

    ``factor = min_{i != t} clip((F_t - F_i) / l_i, 0, 1)``; output ``F_i + factor * l_i``.
    """
    guard = c * l_h * pairwise_row_distances(w_last)[y]  # (N, K), zero at the target
    with torch.no_grad():
        ft = logits.gather(1, y[:, None])
        ratio = ((ft - logits) / guard.clamp_min(1e-12)).clamp(0.0, 1.0)
        ratio = ratio.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("inf"))
        factor = ratio.min(1).values
    return logits + factor[:, None] * guard


def lmt_loss(logits: torch.Tensor, y: torch.Tensor, l_h: torch.Tensor, w_last: torch.Tensor, c: float) -> torch.Tensor:
    return F.cross_entropy(lmt_pairwise_logits(logits, y, l_h, w_last, c), y)


def hinge_loss(logits: torch.Tensor, y: torch.Tensor, eps: float, lip: float = 1.0) -> torch.Tensor:
    """Multi-class hinge with margin ``sqrt2 eps L``: the margin that certifies radius ``eps`` (LNets/BCOP)."""
    return F.multi_margin_loss(logits, y, margin=math.sqrt(2.0) * eps * lip)


def margin_ce_loss(logits: torch.Tensor, y: torch.Tensor, eps: float, tau: float, lip: float = 1.0) -> torch.Tensor:
    """Cross-entropy with temperature on margin-offset logits (GloRo/LMT-style margin, deel-lip's tau-CE).

    Non-target logits are raised by ``sqrt2 eps L`` (the margin that certifies ``eps`` for an
    L-Lipschitz net with an orthonormal last layer); ``CE(tau * z) / tau``. With ``eps = 0`` this is
    deel-lip's ``TauCrossEntropyLoss``. Large ``tau`` tends to the hinge-like max-margin objective,
    small ``tau`` to plain cross-entropy on a 1-Lipschitz net (little margin).
    """
    z = logits + math.sqrt(2.0) * eps * lip * (1.0 - _onehot(y, logits.shape[1], logits))
    return F.cross_entropy(tau * z, y) / tau


def pairwise_radius(logits: torch.Tensor, y: torch.Tensor, l_h: float, w_last: torch.Tensor) -> torch.Tensor:
    """Trainer-side radius ``min_{i!=t} (F_t - F_i) / (L_h ||w_t - w_i||)``, 0 when misclassified.

    Uses the trainer's estimate of ``L_h``: a progress figure, never a certificate.
    """
    d = pairwise_row_distances(w_last.detach())[y] * l_h
    gap = logits.gather(1, y[:, None]) - logits
    r = (gap / d.clamp_min(1e-12)).masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("inf")).min(1).values
    return r.clamp_min(0.0)
