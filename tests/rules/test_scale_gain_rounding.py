"""Mul/Div by a constant: the gain ``max sqrt(sum c^2)`` is rounded up, whatever the constant's magnitude.

The old float64 computation squared the constant directly: 1e-170 in a float64 model squared to 0, so the op's
bound (and the network's) was 0 and every radius infinite; sums of squares could also land an ulp low.
Oracle: exact rationals (fractions) of the float64 constants.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.analyze import analyze


def _mul_model(c: np.ndarray, in_shape: list[int], out_shape: list[int], op: str = "Mul"):
    g = helper.make_graph(
        [helper.make_node(op, ["x", "c"], ["y"])],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, out_shape)],
        [numpy_helper.from_array(np.asarray(c, dtype=np.float64), "c")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _exact_gain(c: np.ndarray, copies_axis: int | None) -> Fraction:
    """max over x elements of sum of c^2 over its copies, as an exact rational (squared gain)."""
    sq = np.vectorize(lambda v: Fraction(float(v)) ** 2, otypes=[object])(c)
    if copies_axis is not None:
        sq = sq.sum(axis=copies_axis)
    return max(sq.reshape(-1))


def _at_least(bound: float, exact_sq: Fraction) -> bool:
    return Fraction(bound) ** 2 >= exact_sq


@pytest.mark.parametrize("c", [1e-170, 1e-200, 5e-324, 1e-310, 0.1, 3.0, 1e150, 1e-160])
def test_scalar_scale_of_any_magnitude(c: float) -> None:
    bound = analyze(_mul_model(np.array([c]), [1, 4], [1, 4])).bound
    assert bound > 0 and _at_least(bound, Fraction(c) ** 2)
    assert bound <= c * (1 + 1e-12) + 1e-320  # and still tight


@pytest.mark.parametrize("seed", range(6))
def test_broadcast_copies_sum_rounded_up(seed: int) -> None:
    """x (1, 1, 5) broadcast against c (1, 7, 5): each x element meets 7 entries; gain^2 = max_j sum_i c_ij^2."""
    rng = np.random.default_rng(seed)
    scale = [1e-170, 1.0, 1e150][seed % 3]
    c = rng.uniform(0.1, 1.0, size=(1, 7, 5)) * scale
    bound = analyze(_mul_model(c, [1, 1, 5], [1, 7, 5])).bound
    exact = _exact_gain(c[0], 0)
    assert _at_least(bound, exact)
    assert Fraction(bound) ** 2 <= exact * Fraction(1 + 1e-12) ** 2  # and still tight


def test_div_by_huge_constant_is_not_zero() -> None:
    """1 / 1e170 = 1e-170: its square underflowed in the old computation."""
    bound = analyze(_mul_model(np.array([1e170]), [1, 4], [1, 4], op="Div")).bound
    assert bound > 0 and _at_least(bound, (1 / Fraction(1e170)) ** 2)
