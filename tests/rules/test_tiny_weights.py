"""Weights near the bottom of float64 (a float64 model): the bounds stay upper bounds.

Oracle: exact rationals (fractions) of the float64 weights. Found by review: a weight vector of 1e-200
squared to 0 in the vector norm (bound 5e-324 for an exact 3.7e-200), and folding scales into weights whose
products land in the subnormal range broke the relative rounding count of the folded weights.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.analyze import analyze
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes


def _model(nodes, inits, in_dim: int, out_dim: int):
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, out_dim])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float64), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e-300, 1.0, 1e150])
def test_vector_weight_norm_of_any_magnitude(scale: float) -> None:
    w = np.array([[1.0], [2.0], [-3.0]]) * scale
    bound = analyze(_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w}, 3, 1)).bound
    exact_sq = sum(Fraction(float(v)) ** 2 for v in w.reshape(-1))
    assert Fraction(bound) ** 2 >= exact_sq
    assert Fraction(bound) ** 2 <= exact_sq * Fraction(1 + 1e-12) ** 2


def test_no_fold_into_subnormal_products() -> None:
    """MatMul(diag(1e-300)) -> Mul(1e-22): the folded weight would be subnormal; the fold is not made."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "c"], ["y"])]
    m = _model(nodes, {"w": np.diag([1e-300, 1e-300]), "c": np.array(1e-22)}, 2, 2)
    graph = build_graph(m, None, None)
    run_passes(graph)
    assert sorted(n.op_type for n in graph.nodes) == ["MatMul", "Mul"]
    # a normal product still folds
    m2 = _model(nodes, {"w": np.diag([1e-200, 1e-200]), "c": np.array(1e-22)}, 2, 2)
    graph2 = build_graph(m2, None, None)
    run_passes(graph2)
    assert [n.op_type for n in graph2.nodes] == ["MatMul"]


def test_composition_of_tiny_factors_rounds_up() -> None:
    """MatMul(diag(1e-300)) then 41 Muls: each product of the cumulative bound rounds in the subnormal range;
    the composed bound must stay above the exact product (it was 0.84 of it with the folds, before)."""
    k = 40
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"]), helper.make_node("Mul", ["h0", "c0"], ["h1"])]
    for i in range(1, k + 1):
        nodes.append(helper.make_node("Mul", [f"h{i}", "c"], [f"h{i + 1}" if i < k else "y"]))
    inits = {"w": np.diag([1e-300, 1e-300]), "c0": np.array(1e-22), "c": np.array(1.004)}
    bound = analyze(_model(nodes, inits, 2, 2)).bound
    exact = Fraction(1e-300) * Fraction(1e-22) * Fraction(1.004) ** k
    assert Fraction(bound) >= exact


def test_composition_of_normal_factors_rounds_up() -> None:
    """60 Muls by 1.1 (not a float64 number exactly representable product chain): bound >= exact product."""
    k = 60
    nodes = [helper.make_node("Mul", ["x" if i == 0 else f"h{i}", "c"], [f"h{i + 1}" if i < k - 1 else "y"])
             for i in range(k)]
    bound = analyze(_model(nodes, {"c": np.array(1.1)}, 2, 2)).bound
    assert Fraction(bound) >= Fraction(1.1) ** k


@pytest.mark.parametrize("scale", [1e-170, 1e-300, 1e-320, 1.0, 1e150, 1e300])
def test_row_norms_up_against_exact(scale: float) -> None:
    from lipgraph.norms.dense import row_norms_up

    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 9)) * scale
    a[2] *= 1e-6  # a row far below the others
    a[4] = 0.0
    got = row_norms_up(a)
    for row, bound in zip(a, got, strict=True):
        exact_sq = sum(Fraction(float(v)) ** 2 for v in row)
        assert Fraction(float(bound)) ** 2 >= exact_sq
        slack = exact_sq * Fraction(1 + 1e-10) ** 2 + Fraction(2.0**-1070)
        assert exact_sq == 0 or Fraction(float(bound)) ** 2 <= slack


def test_pairwise_tail_norms_of_tiny_weights() -> None:
    """A float64 Gemm with 1e-170 weights: the affine tail's pair norms (the radii's denominators) were 0."""
    from lipgraph.tail import find_tail

    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3)) * 1e-170
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], {"w": w}, 3, 4)
    a = analyze(m)
    tail = find_tail(a.graph, a.logits_name, a.tensor_bounds)[-1]
    for t in range(4):
        got = tail.pair_norms(t)
        for i in range(4):
            if i != t:
                exact_sq = sum((Fraction(float(p)) - Fraction(float(q))) ** 2 for p, q in zip(w[t], w[i], strict=True))
                assert Fraction(float(got[i])) ** 2 >= exact_sq
