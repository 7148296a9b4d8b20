"""Elementwise arithmetic and joins against oracles (SPEC sec. 3-4, sec. 9).

Affine ops: exact norm of the dense matrix (onnxruntime on basis vectors). Nonlinear joins
(Max, Min): secant lower estimates of the Lipschitz constant at random points.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from lipgraph import analyze
from lipgraph.errors import UnsupportedModelError
from tests.helpers.onnx_oracle import check_linear_bound, exact_norm, make_model, max_jacobian_norm, one_node, spectral

EXACT = 1 + 1e-6


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


_check_linear = check_linear_bound


# ------------------------------------------------------------------------------ Add / Sub / Sum
@pytest.mark.parametrize("op", ["Add", "Sub"])
@pytest.mark.parametrize("x_shape, c_shape", [
    ([2, 3], [2, 3]),
    ([2, 3], [3]),
    ([1, 3], [4, 3]),  # x broadcast 4 times: sqrt(4)
    ([3], [2, 5, 3]),  # x broadcast 10 times
    ([2, 1, 3], [2, 4, 1]),  # both broadcast
    ([1, 3, 1, 1], [1, 3, 2, 2]),
])
@pytest.mark.parametrize("const_first", [False, True])
def test_add_sub_constant_broadcast(op: str, x_shape, c_shape, const_first: bool) -> None:
    order = ["c", "x"] if const_first else ["x", "c"]
    model = one_node(op, x_shape, {"c": _rand(*c_shape)}, input_order=order)
    bound, exact = _check_linear(model, x_shape, exact_claimed=True)
    k = int(np.prod(np.broadcast_shapes(tuple(x_shape), tuple(c_shape)))) // int(np.prod(x_shape))
    assert bound == pytest.approx(math.sqrt(k), rel=1e-9)


def test_add_of_two_broadcast_branches() -> None:
    # y[i, j] = x[j] + x[i]: each x element appears 3 times in each branch; bound sqrt(3) + sqrt(3).
    nodes = [
        helper.make_node("Reshape", ["x", "col"], ["xc"]),
        helper.make_node("Add", ["x", "xc"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 3])], ["y"], {"col": np.array([3, 1], dtype=np.int64)})
    bound, exact = _check_linear(model, [1, 3], exact_claimed=False)
    assert bound == pytest.approx(2 * math.sqrt(3), rel=1e-9)


def test_sum_of_three_branches_with_broadcast() -> None:
    # Sum(x A (1, 3), reshape(x B) (3, 1), c (3, 3)): each branch broadcast 3 times, the constant free.
    a, b = _rand(4, 3, seed=1), _rand(4, 3, seed=2)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["xa"]),
        helper.make_node("MatMul", ["x", "B"], ["xb"]),
        helper.make_node("Reshape", ["xb", "col"], ["xbc"]),
        helper.make_node("Sum", ["xa", "xbc", "c"], ["y"]),
    ]
    inits = {"A": a, "B": b, "col": np.array([3, 1], dtype=np.int64), "c": _rand(3, 3, seed=3)}
    model = make_model(nodes, [("x", [1, 4])], ["y"], inits)
    bound, _ = _check_linear(model, [1, 4], exact_claimed=False)
    want = math.sqrt(3) * spectral(a) + math.sqrt(3) * spectral(b)
    assert want <= bound <= want * EXACT


def test_sub_of_same_tensor_is_sound() -> None:
    model = one_node("Sub", [2, 3], {}, input_order=["x", "x"])
    bound, exact = _check_linear(model, [2, 3], exact_claimed=False)
    assert exact == 0.0 and bound == pytest.approx(2.0)


# ------------------------------------------------------------------------------ Mul / Div
SCALE_CASES = [
    ([1, 3, 2, 2], [1, 3, 1, 1]),  # per channel: max |c|
    ([2, 3], [2, 3]),  # full constant
    ([2, 3], []),  # scalar
    ([1, 3], [4, 3]),  # x broadcast: max over columns of sqrt(sum c^2)
    ([1, 3], [4, 1]),  # outer product: ||c||
    ([3], [2, 1, 3]),
    ([2, 1, 3], [1, 4, 1]),
]


@pytest.mark.parametrize("x_shape, c_shape", SCALE_CASES)
@pytest.mark.parametrize("const_first", [False, True])
def test_mul_by_constant(x_shape, c_shape, const_first: bool) -> None:
    c = _rand(*c_shape) if c_shape else np.array(-1.7, dtype=np.float32)
    order = ["c", "x"] if const_first else ["x", "c"]
    model = one_node("Mul", x_shape, {"c": c}, input_order=order)
    _check_linear(model, x_shape, exact_claimed=True)


@pytest.mark.parametrize("x_shape, c_shape", SCALE_CASES)
def test_div_by_constant(x_shape, c_shape) -> None:
    rng = np.random.default_rng(len(c_shape))
    c = (rng.uniform(0.2, 3.0, c_shape) * rng.choice([-1, 1], c_shape)).astype(np.float32)
    model = one_node("Div", x_shape, {"c": c})
    _check_linear(model, x_shape, exact_claimed=True)


def test_div_by_variable_refused() -> None:
    model = one_node("Div", [1, 3], {"c": _rand(1, 3)}, input_order=["c", "x"])
    with pytest.raises(UnsupportedModelError, match="Div"):
        analyze(model)


def test_div_by_zero_constant_refused() -> None:
    model = one_node("Div", [1, 3], {"c": np.array([1.0, 0.0, 2.0], dtype=np.float32)})
    with pytest.raises(UnsupportedModelError, match="zero"):
        analyze(model)


def test_mul_of_two_variables_refused() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["x", "r"], ["y"], name="gate")]
    with pytest.raises(UnsupportedModelError, match="gate"):
        analyze(make_model(nodes, [("x", [1, 3])], ["y"]))


# ------------------------------------------------------------------------------ joins
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_of_two_branches(op: str) -> None:
    a, b = _rand(4, 5, seed=4), _rand(4, 5, seed=5)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["xa"]),
        helper.make_node("MatMul", ["x", "B"], ["xb"]),
        helper.make_node(op, ["xa", "xb"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 4])], ["y"], {"A": a, "B": b})
    bound = analyze(model).bound
    want = math.hypot(spectral(a), spectral(b))
    assert want <= bound <= want * EXACT
    assert max_jacobian_norm(model, [1, 4], n_points=8) <= bound * EXACT


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("x_shape, c_shape", [([2, 3], [3]), ([1, 3], [4, 3]), ([3], [2, 2, 3])])
def test_max_min_with_constant_broadcast(op: str, x_shape, c_shape) -> None:
    # A clamp by a constant; when x is broadcast k times the copies are clamped separately: sqrt(k).
    model = one_node(op, x_shape, {"c": 0.3 * _rand(*c_shape)})
    bound = analyze(model).bound
    k = int(np.prod(np.broadcast_shapes(tuple(x_shape), tuple(c_shape)))) // int(np.prod(x_shape))
    assert bound == pytest.approx(math.sqrt(k))
    # Points where every copy is on the x side of the clamp attain sqrt(k).
    direction = 10.0 if op == "Max" else -10.0
    pts = [np.full(int(np.prod(x_shape)), direction)] + [np.random.default_rng(s).standard_normal(
        int(np.prod(x_shape))) for s in range(4)]
    lower = max_jacobian_norm(model, x_shape, points=pts)
    assert lower <= bound * EXACT
    assert lower >= math.sqrt(k) * (1 - 1e-6)  # the rule is exact here


def test_max_of_three_including_constant() -> None:
    a = _rand(3, 3, seed=6)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["xa"]),
        helper.make_node("Max", ["x", "xa", "c"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 3])], ["y"], {"A": a, "c": _rand(1, 3, seed=9)})
    bound = analyze(model).bound
    assert bound == pytest.approx(math.hypot(1.0, spectral(a)), rel=1e-6)
    assert max_jacobian_norm(model, [1, 3], n_points=8) <= bound * EXACT


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_of_branches_and_constants(axis: int) -> None:
    a = _rand(3, 3, seed=7)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["xa"]),
        helper.make_node("Concat", ["x", "c", "xa", "x"], ["y"], axis=axis),
    ]
    model = make_model(nodes, [("x", [2, 3])], ["y"], {"A": a, "c": _rand(2, 3, seed=8)})
    bound, exact = _check_linear(model, [2, 3], exact_claimed=False)
    want = math.sqrt(2 + spectral(a) ** 2)
    assert want <= bound <= want * EXACT


def test_concat_with_constants_only_is_exact() -> None:
    model = one_node("Concat", [2, 3], {"c": _rand(2, 5)}, axis=1)
    _check_linear(model, [2, 3], exact_claimed=True)


def test_mean_of_branches() -> None:
    model = one_node("Mean", [2, 3], {"c": _rand(2, 3)}, input_order=["x", "c", "x"])
    bound, exact = _check_linear(model, [2, 3], exact_claimed=True)
    assert exact == pytest.approx(2 / 3, rel=1e-6)


# ------------------------------------------------------------------------------ seeded fuzz
@pytest.mark.parametrize("seed", range(3))
def test_fuzz_broadcast_ops(seed: int) -> None:
    """Random broadcast shapes (symbolic dims too) for Add/Sub/Mul/Div/Expand: bound >= exact, = for one input."""
    rng = np.random.default_rng(200 + seed)
    for _ in range(15):
        r = int(rng.integers(1, 4))
        out = [int(rng.integers(1, 4)) for _ in range(r)]
        xs = [d if rng.random() < 0.6 else 1 for d in out][int(rng.integers(0, r)):] or [out[-1]]
        cs = [d if rng.random() < 0.6 else 1 for d in out][int(rng.integers(0, r)):]
        decl: list = [f"S{i}" if rng.random() < 0.25 else d for i, d in enumerate(xs)]
        op = str(rng.choice(["Add", "Sub", "Mul", "Div", "Expand"]))
        if op == "Expand":
            model = one_node(op, decl, {"s": np.array(out, np.int64)})
        else:
            c = (rng.uniform(0.5, 2, cs) * rng.choice([-1, 1], cs)).astype(np.float32)
            order = ["c", "x"] if op != "Div" and rng.random() < 0.5 else ["x", "c"]
            model = one_node(op, decl, {"c": c}, input_order=order)
        try:
            bound = analyze(model).bound
        except UnsupportedModelError:
            continue  # refusing is sound
        exact = exact_norm(model, xs)
        assert exact * (1 - 1e-7) <= bound, (op, decl, cs, bound, exact)
        if all(isinstance(d, int) for d in decl):
            assert bound <= exact * EXACT, (op, decl, cs, bound, exact)
