"""Higham's gamma_n: the relative error bound of n rounded operations, shared by every norm and bound that
charges its own float rounding (Higham 2002, Lemma 3.1)."""

from __future__ import annotations

from lipgraph.norms import EPS64


def gamma(n: int, u: float = EPS64) -> float:
    """``gamma_n = n u / (1 - n u)`` rounded up (a relative 1e-12 covers its own few roundings).

    Raises ValueError where ``n u >= 1/2``: no useful bound then (the caller refuses or falls back)."""
    if n * u >= 0.5:
        raise ValueError(f"a sum of {n} terms at unit roundoff {u:g} has no useful error bound")
    return n * u / (1.0 - n * u) * (1.0 + 1e-12)
