"""Gemm and MatMul against the exact norm of their dense matrices (SPEC sec. 9).

Oracle: the operator's matrix, built by running the one-node model on basis vectors with
onnxruntime, and its float64 SVD. Sound: bound >= exact. Where the rule claims exactness
(a 2-D constant operand), bound <= exact * (1 + 1e-6).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lipgraph import analyze
from lipgraph.rules.registry import lookup
from tests.helpers.onnx_oracle import check_linear_bound, one_node

EXACT = 1 + 1e-6


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 7 * len(shape) + sum(shape)).standard_normal(shape).astype(np.float32)


_check = check_linear_bound


@pytest.mark.parametrize("trans_a, trans_b, alpha, beta", list(itertools.product(
    [0, 1], [0, 1], [1.0, -0.37, 2.5], [1.0, -3.0])))
def test_gemm_variable_a(trans_a: int, trans_b: int, alpha: float, beta: float) -> None:
    m, k, n = 3, 5, 4
    x_shape = [k, m] if trans_a else [m, k]
    w = _rand(*([n, k] if trans_b else [k, n]))
    c = _rand(n, seed=1)
    model = one_node("Gemm", x_shape, {"W": w, "C": c}, transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    _check(model, x_shape, exact_claimed=True)


@pytest.mark.parametrize("trans_a, trans_b", list(itertools.product([0, 1], [0, 1])))
def test_gemm_variable_b(trans_a: int, trans_b: int) -> None:
    m, k, n = 4, 3, 2
    a = _rand(*([k, m] if trans_a else [m, k]), seed=2)
    x_shape = [n, k] if trans_b else [k, n]
    model = one_node("Gemm", x_shape, {"A": a}, input_order=["A", "x"], transA=trans_a, transB=trans_b, alpha=-1.5)
    _check(model, x_shape, exact_claimed=True)


@pytest.mark.parametrize("beta", [1.0, -0.5])
def test_gemm_variable_c_broadcast(beta: float) -> None:
    # y = alpha * A x + beta * broadcast(x): A (3, 1) constant, x (1, 4) is both B and C (C broadcast x3).
    a = _rand(3, 1, seed=3)
    model = one_node("Gemm", [1, 4], {"A": a}, input_order=["A", "x", "x"], alpha=0.8, beta=beta)
    bound, exact = _check(model, [1, 4], exact_claimed=False)
    assert bound <= 0.8 * float(np.linalg.norm(a)) * EXACT + abs(beta) * np.sqrt(3) * EXACT


def test_gemm_variable_c_only() -> None:
    # Only the bias depends on the input: y = A B + beta * x, so |beta| (no broadcast).
    model = one_node("Gemm", [2, 3], {"A": _rand(2, 4), "B": _rand(4, 3)}, input_order=["A", "B", "x"], beta=-2.0)
    bound, _ = _check(model, [2, 3], exact_claimed=True)
    assert bound == pytest.approx(2.0)


def test_gemm_both_operands_variable_refused() -> None:
    from lipgraph.errors import UnsupportedModelError

    model = one_node("Gemm", [3, 3], {}, input_order=["x", "x"])
    with pytest.raises(UnsupportedModelError, match="Gemm"):
        analyze(model)


# ------------------------------------------------------------------------------------------ MatMul
RIGHT_CASES = [
    # (x shape, W shape, exactness claimed by the rule)
    ([3, 4], [4, 5], True),
    ([2, 3, 4], [4, 5], True),
    ([4], [4, 5], True),
    ([3, 4], [4], True),  # 1-D right operand: a vector
    ([2, 3, 4], [2, 4, 5], False),  # batch-wise pairing: max over slices <= joined norm
    ([3, 4], [2, 4, 5], True),  # x broadcast to both slices: exactly the joined norm
    ([1, 3, 4], [2, 4, 5], True),
    ([2, 1, 3, 4], [1, 2, 4, 5], True),  # broadcast on two batch axes
]


@pytest.mark.parametrize("x_shape, w_shape, exact", RIGHT_CASES)
def test_matmul_right_constant(x_shape: list[int], w_shape: list[int], exact: bool) -> None:
    model = one_node("MatMul", x_shape, {"W": _rand(*w_shape)})
    _check(model, x_shape, exact_claimed=exact)


LEFT_CASES = [
    ([4, 3], [5, 4], True),
    ([2, 4, 3], [5, 4], True),
    ([4], [5, 4], True),
    ([2, 4, 3], [4], True),
    ([2, 4, 3], [2, 5, 4], False),
    ([4, 3], [2, 5, 4], True),
]


@pytest.mark.parametrize("x_shape, w_shape, exact", LEFT_CASES)
def test_matmul_left_constant(x_shape: list[int], w_shape: list[int], exact: bool) -> None:
    model = one_node("MatMul", x_shape, {"W": _rand(*w_shape)}, input_order=["W", "x"])
    _check(model, x_shape, exact_claimed=exact)


def test_matmul_pairing_bound_is_the_joined_norm() -> None:
    # For batch-wise pairing the rule uses the norm of the joined slices: sound, and no worse than that.
    w = _rand(2, 4, 5)
    model = one_node("MatMul", [2, 3, 4], {"W": w})
    joined = float(np.linalg.svd(np.concatenate(list(w.astype(np.float64)), axis=1), compute_uv=False)[0])
    bound, exact = _check(model, [2, 3, 4], exact_claimed=False)
    assert exact <= bound <= joined * EXACT


def test_matmul_two_variables_refused() -> None:
    from lipgraph.errors import UnsupportedModelError

    model = one_node("MatMul", [3, 3], {}, input_order=["x", "x"])
    with pytest.raises(UnsupportedModelError, match="MatMul"):
        analyze(model)


def test_scaled_weights_keep_float64_accuracy() -> None:
    # Large and tiny weights: the relative error of the bound must stay at SVD level.
    for scale in (1e-6, 1e6):
        model = one_node("MatMul", [2, 6], {"W": (_rand(6, 6) * scale).astype(np.float32)})
        _check(model, [2, 6], exact_claimed=True)


def test_rules_are_registered() -> None:
    for op in ("Gemm", "MatMul"):
        assert lookup("ai.onnx", op, 13) is not None


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_matmul_batched_shapes(seed: int) -> None:
    """Random batch broadcasting on either side: always bound >= exact, exact for a 2-D constant."""
    rng = np.random.default_rng(300 + seed)
    for _ in range(15):
        k, m, n = (int(v) for v in rng.integers(1, 4, size=3))
        nb = int(rng.integers(0, 3))
        batch = [int(rng.integers(1, 3)) for _ in range(nb)]
        xb = [d if rng.random() < 0.5 else 1 for d in batch][int(rng.integers(0, nb + 1)):]
        wb = [d if rng.random() < 0.5 else 1 for d in batch][int(rng.integers(0, nb + 1)):]
        left = bool(rng.random() < 0.5)
        ws, xs = (wb + [m, k], xb + [k, n]) if left else (wb + [k, n], xb + [m, k])
        if rng.random() < 0.2:
            ws = [k]
        w = rng.standard_normal(ws).astype(np.float32)
        model = one_node("MatMul", xs, {"W": w}, input_order=["W", "x"] if left else ["x", "W"])
        _check(model, xs, exact_claimed=w.ndim <= 2 or int(np.prod(xb or [1])) == 1)
