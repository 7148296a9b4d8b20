"""CROWN over L2 balls in float64 (lipgraph.norms.crown_l2): oracles, an independent reference, rounding.

The lower bound of ``F_t - F_j`` over the ball must hold at every point of the ball (random points and an
L2 PGD attack on the float64 network), be exact where it can be (every unit stable: the network is affine
on the ball), tend to the margin as r -> 0, agree with a plain float64 CROWN written here without any
rounding term, and keep its rounding terms: crafted nets, checked in exact rational arithmetic, where the
bound without a rounding term claims more than is true.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipgraph.norms.crown_l2 import Affine, CrownL2


def _net(rng: np.random.Generator, sizes: list[int], scale: float = 1.0) -> list[Affine]:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        w = (rng.standard_normal((b, a)) * scale / np.sqrt(a)).astype(np.float32).astype(np.float64)
        bias = (0.1 * rng.standard_normal(b)).astype(np.float32).astype(np.float64)
        layers.append(Affine(w, bias, np.zeros(b)))
    return layers


def _forward(layers: list[Affine], alphas: list[float], x: np.ndarray) -> np.ndarray:
    h = x.reshape(len(x), -1)
    for k, lay in enumerate(layers):
        h = h @ lay.w.T + lay.b
        if k < len(alphas):
            h = np.where(h >= 0, h, alphas[k] * h)
    return h


def _margins(f: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = f[np.arange(len(f)), t][:, None] - f
    m[np.arange(len(f)), t] = np.inf
    return m


def _ball_points(rng: np.random.Generator, x: np.ndarray, r: float, count: int) -> np.ndarray:
    d = rng.standard_normal((count, *x.shape))
    d /= np.linalg.norm(d.reshape(count, -1), axis=1).reshape(-1, *[1] * x.ndim)
    scale = r * rng.uniform(0, 1, count) ** (1 / x.size)
    scale[: count // 2] = r  # half on the sphere, where the minimum of a piecewise-linear map often is
    return x[None] + d * scale.reshape(-1, *[1] * x.ndim)


def _pgd(layers, alphas, x, t, j, r, steps=60):
    """L2 PGD on F_t - F_j of the float64 network (finite-difference-free: the gradient of the active pattern)."""
    xs = x.copy()
    step = 2.5 * r / steps
    for _ in range(steps):
        h, masks = xs, []
        for k, lay in enumerate(layers):
            h = h @ lay.w.T + lay.b
            if k < len(alphas):
                masks.append(np.where(h >= 0, 1.0, alphas[k]))
                h = h * masks[-1]
        g = layers[-1].w[t] - layers[-1].w[j]  # d(F_t - F_j)/dh
        for k in range(len(alphas) - 1, -1, -1):
            g = (g * masks[k]) @ layers[k].w
        g /= np.linalg.norm(g) + 1e-30
        xs = xs - step * g
        delta = xs - x
        n = np.linalg.norm(delta)
        if n > r:
            xs = x + delta * (r / n)
    return xs


@pytest.mark.parametrize("alphas", [[0.0, 0.0], [0.1, 0.0], [0.0]])
def test_lower_bound_holds_at_random_and_attacked_points(alphas: list[float]) -> None:
    rng = np.random.default_rng(len(alphas) * 10 + int(10 * alphas[0]))
    sizes = [6, 12, 10, 4][: len(alphas) + 1] + [4]
    layers = _net(rng, sizes, 2.0)
    crown = CrownL2(layers, alphas)
    x = rng.uniform(0, 1, (8, 6))
    t = np.argmax(_forward(layers, alphas, x), axis=1)
    for r in (0.05, 0.2, 0.6):
        lb = crown.margin_lower_bounds(x, t, r)
        for i in range(len(x)):
            pts = _ball_points(rng, x[i], r, 400)
            m = _margins(_forward(layers, alphas, pts), np.full(len(pts), t[i]))
            assert np.all(lb[i][None] <= m + 1e-12), (r, i)
            for j in range(4):
                if j != t[i]:
                    adv = _pgd(layers, alphas, x[i], t[i], j, r)
                    fm = _forward(layers, alphas, adv[None])[0]
                    assert lb[i, j] <= fm[t[i]] - fm[j] + 1e-12


def test_exact_where_every_unit_is_stable_and_the_margin_at_radius_zero() -> None:
    rng = np.random.default_rng(3)
    layers = _net(rng, [5, 7, 3])
    layers[0] = Affine(layers[0].w, np.full(7, 5.0), np.zeros(7))  # every unit active near x
    crown = CrownL2(layers, [0.0])
    x = rng.uniform(0, 1, (4, 5))
    t = np.zeros(4, dtype=np.int64)
    r = 0.3
    lb = crown.margin_lower_bounds(x, t, r)
    # affine on the ball: F_t - F_j = a.x' + c, minimum a.x + c - r ||a|| (float64 oracle)
    f = _forward(layers, [0.0], x)
    for j in (1, 2):
        a = (layers[1].w[0] - layers[1].w[j]) @ layers[0].w
        exact = f[:, 0] - f[:, j] - r * np.linalg.norm(a)
        np.testing.assert_allclose(lb[:, j], exact, rtol=1e-9, atol=1e-9)
        assert np.all(lb[:, j] <= exact + 1e-13)
    lb0 = crown.margin_lower_bounds(x, t, 0.0)
    np.testing.assert_allclose(lb0[:, 1:], (f[:, :1] - f)[:, 1:], rtol=1e-9, atol=1e-9)


def _reference_crown(layers: list[Affine], x: np.ndarray, t: int, r: float) -> np.ndarray:
    """Plain float64 CROWN for ReLU chains (Zhang et al. 2018), no rounding terms, input norms taken directly."""

    def backward(spec_w: np.ndarray, spec_b: np.ndarray, top: int, bounds) -> np.ndarray:
        lam, const = spec_w, spec_b.copy()
        for k in range(top, -1, -1):
            lo, hi = bounds[k]
            uns = (lo < 0) & (hi > 0)
            s = np.where(uns, hi / np.where(uns, hi - lo, 1.0), (lo >= 0).astype(float))
            low = np.where(uns, (hi > -lo).astype(float), (lo >= 0).astype(float))
            lam_new = np.where(lam < 0, lam * s, lam * low)
            const = const + np.where(lam < 0, lam, 0.0) @ np.where(uns, -s * lo, 0.0)
            lam = lam_new
            const = const + lam @ layers[k].b
            lam = lam @ layers[k].w
        return lam @ x + const - r * np.linalg.norm(lam, axis=1)

    bounds = []
    for k in range(len(layers) - 1):
        w, b = layers[k].w, layers[k].b
        if k == 0:
            z = w @ x + b
            rad = r * np.linalg.norm(w, axis=1)
            bounds.append((z - rad, z + rad))
        else:
            lo = backward(w, b, k - 1, bounds)
            hi = -backward(-w, -b, k - 1, bounds)
            bounds.append((lo, hi))
    last = layers[-1]
    lb = backward(last.w[t][None] - last.w, last.b[t] - last.b, len(layers) - 2, bounds)
    lb[t] = np.inf
    return lb


def test_agrees_with_an_independent_float64_crown() -> None:
    rng = np.random.default_rng(7)
    layers = _net(rng, [10, 16, 12, 8, 5], 1.5)
    crown = CrownL2(layers, [0.0, 0.0, 0.0])
    x = rng.uniform(0, 1, (6, 10))
    t = np.argmax(_forward(layers, [0.0] * 3, x), axis=1)
    for r in (0.02, 0.1, 0.4):
        lb = crown.margin_lower_bounds(x, t, r)
        for i in range(len(x)):
            ref = _reference_crown(layers, x[i], int(t[i]), r)
            fin = np.isfinite(ref)
            np.testing.assert_allclose(lb[i][fin], ref[fin], rtol=1e-9, atol=1e-10)
            assert np.all(lb[i][fin] <= ref[fin])  # the rounding terms only lower it


def _exact_min_below(
    w0: np.ndarray, b0: np.ndarray, nu: np.ndarray, c: float, x: np.ndarray, r: float, value: float
) -> bool:
    """True when ``value`` is at most the exact minimum over the ball of ``nu . relu(W_0 x' + b_0) + c``, in
    rational arithmetic; every unit is checked to be active on the whole ball (the map is affine there)."""
    w = [[Fraction(v) for v in row] for row in w0]
    xs = [Fraction(v) for v in x]
    rr = Fraction(r)
    z = [
        sum((wi * xi for wi, xi in zip(row, xs, strict=True)), Fraction(0)) + Fraction(b)
        for row, b in zip(w, b0, strict=True)
    ]
    for zi, row in zip(z, w, strict=True):
        assert zi > 0 and zi * zi > rr * rr * sum(v * v for v in row), "crafted units must stay active"
    n = [Fraction(v) for v in nu]
    a = [sum(n[i] * w[i][k] for i in range(len(n))) for k in range(len(xs))]
    at_x = Fraction(c) + sum(n[i] * z[i] for i in range(len(n)))
    gap = at_x - Fraction(value)  # value <= at_x - r ||a||  <=>  gap >= 0 and gap^2 >= r^2 ||a||^2
    return gap >= 0 and gap * gap >= rr * rr * sum(v * v for v in a)


def test_crafted_net_needs_the_first_layer_rounding_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """``z_0 = x_1 + x_2 - 2^60`` at ``x = (2^60, 1)``: float64 gives 0, the real value is 1 (active on the
    ball). ``F_0 - F_1 = 0.5 - h`` is -0.5 everywhere near x; without the rounding bound of z_0 (gamma_n
    (|W||x| + |b|), Higham 2002) the bound believes ``h`` is near 0 and claims a positive margin."""
    from lipgraph.norms import crown_l2

    w0, b0 = np.array([[1.0, 1.0]]), np.array([-(2.0**60)])
    layers = [Affine(w0, b0, np.zeros(1)), Affine(np.array([[-1.0], [0.0]]), np.array([0.5, 0.0]), np.zeros(2))]
    x, r = np.array([2.0**60, 1.0]), 2.0**-20
    lb = CrownL2(layers, [0.0]).margin_lower_bounds(x[None], np.array([0]), r)[0, 1]
    assert _exact_min_below(w0, b0, np.array([-1.0]), 0.5, x, r, lb)
    monkeypatch.setattr(crown_l2, "gamma", lambda n, u: 0.0)  # the mutation: no rounding terms
    naive = CrownL2(layers, [0.0]).margin_lower_bounds(x[None], np.array([0]), r)[0, 1]
    assert naive > 0 and not _exact_min_below(w0, b0, np.array([-1.0]), 0.5, x, r, naive)


def test_crafted_net_needs_the_gram_rounding_term() -> None:
    """Two nearly parallel first-layer rows: ``W_0 = [[1, 2^-30], [1, 0]]``, ``a = W_0^T (1, -1) = (0, 2^-30)``,
    but ``fl(1 + 2^-60) = 1``, so the float64 form ``nu^T fl(W_0 W_0^T) nu`` is 0. The second layer's unit
    ``h_a - h_b + 2^-31`` has minimum ``2^-31 - r 2^-30 < 0`` over the ball of radius 1 (both first units
    active); its lower pre-activation bound must stay below that."""
    w0, b0 = np.array([[1.0, 2.0**-30], [1.0, 0.0]]), np.array([10.0, 10.0])
    layers = [
        Affine(w0, b0, np.zeros(2)),
        Affine(np.array([[1.0, -1.0]]), np.array([2.0**-31]), np.zeros(1)),
        Affine(np.array([[1.0], [0.0]]), np.zeros(2), np.zeros(2)),
    ]
    crown = CrownL2(layers, [0.0, 0.0])
    x, r = np.zeros(2), 1.0
    lo = crown.layer_bounds(*crown.first_layer(x[None]), r)[1][0][0, 0]
    assert _exact_min_below(w0, b0, np.array([1.0, -1.0]), 2.0**-31, x, r, lo)
    crown.gram_err = 0.0  # the mutation: the Gram matrix's rounding term dropped
    naive = crown.layer_bounds(*crown.first_layer(x[None]), r)[1][0][0, 0]
    assert naive > 0 and not _exact_min_below(w0, b0, np.array([1.0, -1.0]), 2.0**-31, x, r, naive)


def test_rejects_slopes_outside_the_unit_interval() -> None:
    layers = _net(np.random.default_rng(0), [3, 4, 2])
    with pytest.raises(ValueError):
        CrownL2(layers, [1.5])
    with pytest.raises(ValueError):
        CrownL2(layers[:1], [])
