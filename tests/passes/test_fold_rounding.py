"""Folded weights are rounded in float64: their rules must still bound the model's exact map.

Each model chains many Div (or BatchNormalization) nodes onto one small linear op, with divisors chosen
greedily so that every float64 fold rounds the stored weight *down*. The exact norm of the model's map
is computed in exact rationals (fractions) or mpmath; the stored weight's own norm bound (what the
rules gave before they counted ``Node.rho``) falls below it, the rule's bound does not.
"""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest
from onnx import helper

from lipgraph.analyze import analyze
from lipgraph.graph_build import build_graph
from lipgraph.norms.conv import conv_bound
from lipgraph.norms.dense import spectral_norm
from lipgraph.norms.rounding import gamma
from lipgraph.norms.weight_rounding import abs_norm_conv, abs_norm_dense, compose, fold_rho
from lipgraph.passes import run_passes
from tests.helpers.onnx_oracle import make_model

F32 = np.float32
RNG = np.random.default_rng(20240607)


def _unlucky_divisors(w0: float, k: int) -> tuple[list[np.float32], Fraction, float]:
    """k float32 divisors whose successive folds ``fl(w * fl(1 / c))`` each round w down (relative to the
    exact quotient); returns them, the exact final weight and the float64 one fold_scale stores."""
    exact, stored = Fraction(w0), float(w0)
    out = []
    for _ in range(k):
        best = None
        for c in RNG.uniform(0.5, 2.0, 64).astype(F32):
            cand = stored * (1.0 / float(c))
            ratio = Fraction(cand) / (exact / Fraction(float(c)))
            if best is None or ratio < best[0]:
                best = (ratio, c, cand)
        assert best is not None
        _, c, stored = best
        exact /= Fraction(float(c))
        out.append(c)
    return out, exact, stored


def _div_chain(first: str, divisors: list[np.float32], last: str) -> tuple[list, dict]:
    nodes, inits, src = [], {}, first
    for i, c in enumerate(divisors):
        dst = last if i == len(divisors) - 1 else f"d{i}"
        inits[f"c{i}"] = np.array(c, dtype=F32)
        nodes.append(helper.make_node("Div", [src, f"c{i}"], [dst]))
        src = dst
    return nodes, inits


def test_fold_rho_composes_gamma_bounds() -> None:
    assert fold_rho(0) == 0.0
    assert fold_rho(2) >= gamma(2)
    a, b = gamma(4), gamma(2)
    exact = (1 + Fraction(a)) * (1 + Fraction(b)) - 1
    assert Fraction(compose(a, b)) >= exact
    assert compose(a, b) <= 1.000001 * float(exact)  # sound but not loose
    assert compose(0.0, a) == a
    with pytest.raises(ValueError):
        compose(-1e-16)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 2)])
def test_abs_norm_dense_bounds_the_absolute_matrix(shape: tuple[int, int]) -> None:
    for scale in (1e-300, 1.0, 1e150):
        w = RNG.standard_normal(shape) * scale
        a = mpmath.matrix(np.abs(w).tolist())
        eigs, _ = mpmath.eigsy(a.T * a)  # in mpmath: no underflow of the squares at 1e-300
        exact = mpmath.sqrt(max(eigs))
        assert mpmath.mpf(abs_norm_dense(w)) >= exact  # Schur: never below the norm of |W|
    assert abs_norm_dense(np.zeros((2, 3))) == 0.0


@pytest.mark.parametrize(
    ("groups", "stride", "dilation", "pads"), [(1, 1, 1, 1), (2, 2, 1, 0), (1, 1, 2, 2), (4, 3, 1, 1)]
)
def test_abs_norm_conv_bounds_the_absolute_operator(groups: int, stride: int, dilation: int, pads: int) -> None:
    from tests.rules.conv_oracle import dense_matrix

    w = RNG.standard_normal((4, 4 // groups, 3, 3)).astype(F32)
    attrs = {"group": groups, "strides": [stride] * 2, "dilations": [dilation] * 2, "pads": [pads] * 4}
    for op, kernel in (("Conv", w), ("ConvTranspose", w)):
        t, _ = dense_matrix(op, np.abs(kernel), (1, 4, 7, 6), **attrs)  # float32 sums of float32 weights
        assert abs_norm_conv(kernel, groups) >= np.linalg.norm(t, 2) * (1 - 1e-6)


def _bound(model) -> float:
    return analyze(model).bound


def _folded(model):
    g = build_graph(model)
    run_passes(g)
    return g


def test_matmul_div_chain_folded_down_is_still_bounded() -> None:
    """x @ w / c1 / ... / c40 folded into one 1x1 MatMul: the stored weight ends ~40 ulps low."""
    divisors, exact, stored = _unlucky_divisors(1.0, 40)
    chain, inits = _div_chain("h", divisors, "y")
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), *chain],
        [("x", (1, 1))],
        ["y"],
        {"w": np.ones((1, 1), F32), **inits},
    )
    g = _folded(model)
    [mm] = [n for n in g.nodes if n.op_type == "MatMul"]
    w_stored = g.tensors[mm.inputs[1]].value
    assert float(w_stored.reshape(-1)[0]) == stored  # the fold computed what the greedy search predicted
    assert mm.rho >= gamma(2) * 40 * 0.99
    old = spectral_norm(np.asarray(w_stored, dtype=np.float64)).value  # the bound before rho was counted
    assert Fraction(old) < abs(exact), "the crafted fold no longer rounds below the exact weight"
    assert Fraction(_bound(model)) >= abs(exact)


def test_pre_folded_divisions_before_gemm() -> None:
    """x / c1 / ... / c40 -> Gemm(transB): the divisions fold into the Gemm's input features."""
    divisors, exact, _ = _unlucky_divisors(1.0, 40)
    chain, inits = _div_chain("x", divisors, "h")
    gemm = helper.make_node("Gemm", ["h", "w"], ["y"], transB=1, alpha=1.0)
    model = make_model([*chain, gemm], [("x", (1, 1))], ["y"], {"w": np.ones((1, 1), F32), **inits})
    [node] = [n for n in _folded(model).nodes if n.op_type == "Gemm"]
    assert node.rho > 0
    assert Fraction(_bound(model)) >= abs(exact)


def test_conv_bn_then_divisions() -> None:
    """Conv -> BatchNormalization -> Div chain, one channel, 1x1 kernel: BN's scale (three roundings) and
    the divisions all fold into the kernel; the exact norm is |w gamma / sqrt(var + eps) / prod c|."""
    divisors, exact_div, _ = _unlucky_divisors(1.0, 40)
    chain, inits = _div_chain("b", divisors, "y")
    gamma_, var, eps = F32(1.3), F32(0.7), 1e-5
    bn = helper.make_node("BatchNormalization", ["h", "g", "beta", "mean", "var"], ["b"], epsilon=eps)
    conv = helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[1, 1])
    inits.update(
        w=np.full((1, 1, 1, 1), 0.9, F32),
        g=np.array([gamma_], F32),
        beta=np.zeros(1, F32),
        mean=np.zeros(1, F32),
        var=np.array([var], F32),
    )
    model = make_model([conv, bn, *chain], [("x", (1, 1, 2, 2))], ["y"], inits)
    g = _folded(model)
    [node] = [n for n in g.nodes if n.op_type == "Conv"]
    assert node.rho >= gamma(3)
    mpmath.mp.dps = 60
    s = mpmath.mpf(float(gamma_)) / mpmath.sqrt(mpmath.mpf(float(var)) + mpmath.mpf(float(F32(eps))))
    exact = abs(mpmath.mpf(float(F32(0.9))) * s * mpmath.mpf(exact_div.numerator) / exact_div.denominator)
    assert mpmath.mpf(_bound(model)) >= exact
    w = np.asarray(g.tensors[node.inputs[1]].value, dtype=np.float64)
    bound = conv_bound(w, 1, [1, 1], [1, 1], [0, 0], [0, 0], (2, 2)).value
    assert mpmath.mpf(bound) < exact * (1 + mpmath.mpf(2) ** -40)  # the stored kernel's norm is within ulps


def test_composed_linear_map_keeps_the_folds_rounding() -> None:
    """MatMul -> Div chain -> MatMul: folded, then composed into one LinearMap, which must carry rho."""
    divisors, exact_div, _ = _unlucky_divisors(1.0, 40)
    chain, inits = _div_chain("h", divisors, "z")
    w1, w2 = np.array([[1.0, 0.0]], F32), np.array([[1.0], [0.0]], F32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), *chain, helper.make_node("MatMul", ["z", "w2"], ["y"])]
    model = make_model(nodes, [("x", (1, 1))], ["y"], {"w1": w1, "w2": w2, **inits})
    g = _folded(model)
    [lmap] = [n for n in g.nodes if n.op_type == "LinearMap"]
    assert lmap.attrs["rho"] >= 40 * gamma(2)
    assert Fraction(_bound(model)) >= abs(exact_div)


def test_div_rule_counts_the_rounded_reciprocal() -> None:
    """A lone Div (nothing to fold into): ``1 / c`` rounded to nearest lands below the exact reciprocal."""
    cs = [c for c in RNG.uniform(0.5, 2.0, 200).astype(F32) if Fraction(1.0 / float(c)) < 1 / Fraction(float(c))]
    c = cs[0]
    model = make_model([helper.make_node("Div", ["x", "c"], ["y"])], [("x", (1, 3))], ["y"], {"c": np.array(c, F32)})
    assert Fraction(_bound(model)) >= 1 / Fraction(float(c))


def test_residual_sandwich_reads_a_folded_q_and_adds_its_rounding() -> None:
    """x - P relu(BN(Q x)): the BatchNormalization folds into Q before the block is fused; the fused node
    carries Q's rho and its rule's factor is strictly above the same node's with rho cleared."""
    from lipgraph.rules.context import RuleContext
    from lipgraph.rules.registry import lookup

    q = RNG.standard_normal((3, 3)).astype(F32)
    nodes = [
        helper.make_node("MatMul", ["x", "q"], ["h"]),
        helper.make_node("BatchNormalization", ["h", "g", "beta", "mean", "var"], ["b"], epsilon=1e-5),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("MatMul", ["r", "p"], ["z"]),
        helper.make_node("Sub", ["x", "z"], ["y"]),
    ]
    inits = {
        "q": q,
        "p": (q.T * F32(0.5)).astype(F32),
        "g": RNG.uniform(0.5, 2.0, 3).astype(F32),
        "beta": np.zeros(3, F32),
        "mean": np.zeros(3, F32),
        "var": RNG.uniform(0.5, 2.0, 3).astype(F32),
    }
    g = _folded(make_model(nodes, [("x", (1, 3))], ["y"], inits))
    [node] = [n for n in g.nodes if n.op_type == "ResidualSandwich"]
    assert node.attrs["rho_q"] >= gamma(4)
    rule = lookup("lipgraph", "ResidualSandwich", 1)
    assert rule is not None
    with_rho = rule.fn(RuleContext(node, g, [1.0])).factor
    node.attrs["rho_q"] = 0.0
    without = rule.fn(RuleContext(node, g, [1.0])).factor
    assert with_rho > without
