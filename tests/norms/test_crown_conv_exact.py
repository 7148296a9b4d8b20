"""The structured conv bound against the exact minimum, in rational arithmetic, on nets built to round badly.

Tiny chains (conv -> LeakyReLU(1) -> conv or dense -> LeakyReLU(1) -> dense) whose constants, inputs and
radii are drawn from values that make float64 lose bits: 2^53 next to 1, 2^27 + 1 squared, 1 + 2^-52,
products that cancel. With slope 1 the activations are the identity, so the real network is affine and its
minimum over the L2 ball is ``F(x) - r ||grad F||`` exactly (``fractions``); every structured bound must lie
below it. The mutation check shows the draw can catch a missing rounding term.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lipgraph.norms import crown_conv
from lipgraph.norms.conv_patches import ConvSpec
from lipgraph.norms.crown_conv import CrownConv, Layer

VALUES = [2.0**53, -(2.0**53), 2.0**52, 1.0, -1.0, 3.0, 0.5, 2.0**27 + 1, -(2.0**27 + 1), 1.0 + 2**-52, 2.0**-30]
INPUTS = [0.0, 1.0, 0.5, -3.0, 2.0**30, 1.0 + 2**-40]


def _net(rng: np.random.Generator) -> tuple[list[Layer], np.ndarray, float] | None:
    width = int(rng.integers(2, 6))
    k0 = int(rng.integers(1, width + 1))
    c0 = int(rng.integers(1, 3))
    p0 = width - k0 + 1
    first = Layer(
        (1, 1, width),
        (c0, 1, p0),
        rng.choice(VALUES + [0.0], c0 * p0),
        np.zeros(c0 * p0),
        conv=ConvSpec(rng.choice(VALUES, (c0, 1, 1, k0)), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    )
    if rng.random() < 0.5:  # a dense middle layer
        n1 = int(rng.integers(1, 4))
        mid = Layer(
            first.out_shape,
            (n1, 1, 1),
            rng.choice(VALUES + [0.0], n1),
            np.zeros(n1),
            w=rng.choice(VALUES, (n1, c0 * p0)),
        )
    else:  # a conv middle layer: padded, strided, its transposed conv's taps summed in a fixed order
        k1, pl, pr, s1, c1 = (
            int(v)
            for v in (
                rng.integers(1, 4),
                rng.integers(0, 3),
                rng.integers(0, 3),
                rng.integers(1, 3),
                rng.integers(1, 3),
            )
        )
        p1 = (p0 + pl + pr - k1) // s1 + 1
        if p1 < 1:
            return None
        spec = ConvSpec(rng.choice(VALUES, (c1, c0, 1, k1)), (1, s1), (0, pl, 0, pr), (1, 1), 1)
        mid = Layer(first.out_shape, (c1, 1, p1), rng.choice(VALUES + [0.0], c1 * p1), np.zeros(c1 * p1), conv=spec)
    n_mid = mid.size()
    last = Layer(mid.out_shape, (2, 1, 1), rng.choice(VALUES + [0.0], 2), np.zeros(2), w=rng.choice(VALUES, (2, n_mid)))
    x = rng.choice(INPUTS, width)
    return [first, mid, last], x, float(rng.choice([2.0**-40, 2.0**-20, 1e-3]))


def _dense(lay: Layer) -> np.ndarray:
    """The layer as a matrix: each column of a conv is one kernel entry per output (exact in float64)."""
    if lay.conv is None:
        assert lay.w is not None
        return lay.w
    d = int(np.prod(lay.in_shape))
    return lay.forward(np.eye(d)).T


def _exact_margin_min(layers: list[Layer], x: np.ndarray, r: float) -> tuple[int, Fraction, Fraction]:
    """(t, F_t - F_j at x, ||grad (F_t - F_j)||^2) of the affine real network (slopes 1), F_t the larger logit."""
    v = [Fraction(float(e)) for e in x]
    grad: list[list[Fraction]] | None = None
    for lay in layers:
        w = [[Fraction(float(e)) for e in row] for row in _dense(lay)]
        v = [
            sum((a * b for a, b in zip(row, v, strict=True)), Fraction(0)) + Fraction(float(b))
            for row, b in zip(w, lay.b, strict=True)
        ]
        grad = (
            w
            if grad is None
            else [
                [sum((row[k] * grad[k][j] for k in range(len(grad))), Fraction(0)) for j in range(len(grad[0]))]
                for row in w
            ]
        )
    assert grad is not None
    t = 0 if v[0] >= v[1] else 1
    g = [grad[t][k] - grad[1 - t][k] for k in range(len(grad[0]))]
    return t, v[t] - v[1 - t], sum((e * e for e in g), Fraction(0))


def _below_min(value: float, at_x: Fraction, grad_sq: Fraction, r: float) -> bool:
    gap = at_x - Fraction(value)  # value <= at_x - r ||g||  <=>  gap >= 0 and gap^2 >= r^2 ||g||^2
    return gap >= 0 and gap * gap >= Fraction(r) ** 2 * grad_sq


def _unsound(trials: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    bad = 0
    for _ in range(trials):
        drawn = _net(rng)
        if drawn is None:
            continue
        layers, x, r = drawn
        t, at_x, grad_sq = _exact_margin_min(layers, x, r)
        lb = CrownConv(layers, [1.0, 1.0]).margin_lower_bounds(x.reshape(1, 1, 1, -1), np.array([t]), r)[0, 1 - t]
        bad += not _below_min(float(lb), at_x, grad_sq, r)
    return bad


def test_structured_bound_is_below_the_exact_minimum_on_nets_that_round_badly() -> None:
    assert _unsound(250, 11) == 0


def test_the_draw_catches_a_bound_without_rounding_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crown_conv, "gamma", lambda n, u: 0.0)  # the mutation: no gamma_n terms at all
    assert _unsound(250, 11) > 0
