"""Non-finite values in the local bound's decision (``lipgraph.local_bounds.local_radii``): a NaN or an infinity
anywhere (input, radius, weights whose float64 products overflow, an allowance that is NaN) must never make
``min_j lb_j > allowance`` true. ``np.min`` over a row with a NaN is NaN and ``NaN > a`` is False, but
``inf - inf``, ``0 * inf`` and a NaN bound read as an inactive unit (``lo >= 0`` and ``lo < 0`` both False) are
each one step away from a false certificate, so every case is checked at the decision itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipgraph.local_bounds import local_radii
from lipgraph.norms.crown_l2 import Affine, CrownL2


def _crown(scale: float = 1.0, alphas: tuple[float, ...] = (0.0, 0.1)) -> CrownL2:
    rng = np.random.default_rng(0)
    sizes = [4, 6, 5, 3]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        w = rng.standard_normal((b, a)).astype(np.float32).astype(np.float64) * scale
        layers.append(Affine(w, rng.standard_normal(b) * 0.1, np.zeros(b)))
    return CrownL2(layers, list(alphas))


def _decide(crown: CrownL2, x: np.ndarray, eps: list[float], allow: float = 0.0) -> np.ndarray:
    n = len(x)
    h = x.astype(np.float64)
    for k, lay in enumerate(crown.layers):
        h = h @ lay.w.T + lay.b
        if k < len(crown.alphas):
            h = np.where(h >= 0, h, crown.alphas[k] * h)
    target = np.nan_to_num(h, nan=0.0).argmax(axis=1)
    logits = np.where(np.isfinite(h), h, 0.0)
    logits[np.arange(n), target] += 1.0  # ONNX Runtime's prediction is the target (the sample is tried)
    res = local_radii(crown, x, logits, target, np.ones(n, bool), np.zeros(n), eps, [(np.full(n, allow), 0.0)], 0.0)
    return res.radius


def test_finite_case_is_certified() -> None:  # the decision can say yes: the cases below are not vacuous
    x = np.random.default_rng(1).standard_normal((8, 4))
    assert np.any(_decide(_crown(), x, [1e-4, 1e-3]) > 0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_entries_never_certify(bad: float) -> None:
    x = np.random.default_rng(1).standard_normal((8, 4))
    x[:, 2] = bad
    with np.errstate(all="ignore"):
        assert np.all(_decide(_crown(), x, [1e-4, 1e-3]) == 0)


@pytest.mark.parametrize("r", [math.inf, 1e300, 1.7e308])
def test_infinite_or_overflowing_radius_never_certifies(r: float) -> None:
    x = np.random.default_rng(1).standard_normal((8, 4))
    with np.errstate(all="ignore"):
        assert np.all(_decide(_crown(), x, [r]) == 0)


def test_weights_whose_products_overflow_never_certify() -> None:
    x = np.random.default_rng(1).standard_normal((8, 4)) * 1e100
    with np.errstate(all="ignore"):
        assert np.all(_decide(_crown(scale=1e120), x, [1e-3, 1.0]) == 0)


def test_nan_allowance_never_certifies() -> None:
    x = np.random.default_rng(1).standard_normal((8, 4))
    with np.errstate(all="ignore"):
        assert np.all(_decide(_crown(), x, [1e-4, 1e-3], allow=math.nan) == 0)
