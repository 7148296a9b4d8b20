"""The cheap attack that spares the local bound (``--local-bounds``) on samples it cannot verify.

A few L2 gradient steps against the runner-up class, in float64 on the chain read by :mod:`lipgraph.local_bounds`;
a point of the ball where ``F_t - F_j`` is already below the allowance means the bound, which lies below
``F_t - F_j`` everywhere in the ball, cannot pass there. It only ever skips work; it never raises a radius.
"""

from __future__ import annotations

import numpy as np

from lipgraph.norms.crown_conv import CrownConv
from lipgraph.norms.crown_l2 import CrownL2

ATTACK_STEPS = 3  # gradient steps of the cheap attack that spares the bound on samples it cannot verify


def _logits64(crown: CrownL2 | CrownConv, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The chain's float64 logits and activation masks (for the attack only)."""
    if isinstance(crown, CrownConv):
        return crown.logits(x)
    h, masks = x, []
    for k, lay in enumerate(crown.layers):
        h = h @ lay.w.T + lay.b
        if k < len(crown.alphas):
            masks.append(np.where(h >= 0, 1.0, crown.alphas[k]))
            h = h * masks[-1]
    return h, masks


def refuted(
    crown: CrownL2 | CrownConv, x: np.ndarray, target: np.ndarray, r: float | np.ndarray, allow: np.ndarray
) -> np.ndarray:
    """Per sample: a point within ``r`` of ``x`` where some ``F_t - F_j`` of the real network is clearly at most
    ``allow`` (a few L2 gradient steps against the runner-up class, evaluated in float64 with a wide margin for
    its rounding). The local bound is below ``F_t - F_j`` everywhere in the ball, so it cannot verify such a
    sample at ``r``; this only saves work and never raises a radius."""
    n = len(x)
    rows = np.arange(n)
    x0 = np.asarray(x, dtype=np.float64).reshape(n, -1)
    xa = x0.copy()
    hit = np.zeros(n, dtype=bool)
    for step in range(ATTACK_STEPS + 1):
        h, masks = _logits64(crown, xa)
        margins = h[rows, target][:, None] - h
        margins[rows, target] = np.inf
        scale = 1.0 + np.max(np.abs(h), axis=1)
        hit |= np.min(margins, axis=1) < allow - 1e-7 * scale  # float64 rounding here is ~1e-13 of the scale
        if step == ATTACK_STEPS:
            break
        j = np.argmin(margins, axis=1)
        g = crown.layers[-1].w[target] - crown.layers[-1].w[j]  # d(F_t - F_j)/dh, then back to the input
        if isinstance(crown, CrownConv):
            g = crown.input_gradient(g, masks)
        else:
            for k in range(len(crown.alphas) - 1, -1, -1):
                g = (g * masks[k]) @ crown.layers[k].w
        g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-300
        xa = xa - (r / 2.0**step) * g
        d = xa - x0
        norm = np.linalg.norm(d, axis=1, keepdims=True)
        xa = x0 + d * np.minimum(1.0, r * (1.0 - 1e-9) / np.maximum(norm, 1e-300))  # stay inside the ball
    return hit
