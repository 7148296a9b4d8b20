"""Operator norms. Rules call these; nothing else in lipgraph computes a norm.

Every function that returns a :class:`NormBound` promises ``value >= ||A||_2`` in real arithmetic
(rounding allowances included, docs/floating-point.md). ``lower``, when present, is a lower estimate
(power iteration or an attained vector) for the slack report and is never used as a bound.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

EPS64 = float(2.0**-53)  # unit roundoff of float64

# Set by the walker only while it re-runs a rule downstream of a refused node, to learn whether that node
# is unsupported in its own right: the rule's value is discarded there, so the costly norms are skipped
# (a ViT's linear layers after its first attention product). Never set while a bound is being used.
_DISCARDED: contextvars.ContextVar[bool] = contextvars.ContextVar("lipgraph_norms_discarded", default=False)


@contextlib.contextmanager
def values_discarded() -> Iterator[None]:
    """Within this block, :func:`discarded` is True: norm functions may return a placeholder."""
    token = _DISCARDED.set(True)
    try:
        yield
    finally:
        _DISCARDED.reset(token)


def discarded() -> bool:
    return _DISCARDED.get()


@dataclass(frozen=True)
class NormBound:
    value: float
    method: str
    lower: float | None = None


def inflate(sigma_hat: float, p: int) -> float:
    """Upper bound of a singular value computed in float64 by a backward-stable SVD.

    LAPACK guarantees ``|sigma_hat - sigma| <= p(m, n) eps ||A||_2``; docs/floating-point.md takes
    ``p = max(m, n)`` (a conservative choice), so ``sigma <= sigma_hat / (1 - p eps)``.
    The result is nudged up one more ulp so that the division's own rounding cannot lower it.
    """
    import numpy as np

    factor = 1.0 - max(int(p), 1) * 4.0 * EPS64
    if factor <= 0.0:
        return float("inf")
    return float(np.nextafter(sigma_hat / factor, np.inf))
