"""GatherND with constant indices and Where with a constant mask, against the exact dense norm
(columns ``f(e_j) - f(0)`` run by onnxruntime, SVD in float64)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError
from tests.helpers.onnx_oracle import exact_norm, make_model, one_node


@pytest.mark.parametrize(
    ("x_shape", "indices", "batch_dims"),
    [
        pytest.param((6, 2), [[0], [2], [2], [5]], 0, id="rows-repeat2"),
        pytest.param((4, 4, 2), [[0, 1], [2, 3], [0, 1], [0, 1]], 0, id="pairs-repeat3"),
        pytest.param((4, 3), [[-1], [3], [0]], 0, id="negative-aliases-positive"),
        pytest.param((2, 5), [[[1], [1]], [[0], [4]]], 1, id="batch-dims"),
        pytest.param((3, 3), [[0, 0], [1, 1], [2, 2]], 0, id="diagonal-no-repeat"),
    ],
)
def test_gather_nd_matches_exact_norm(x_shape, indices, batch_dims) -> None:
    idx = np.asarray(indices, dtype=np.int64)
    m = one_node("GatherND", x_shape, {"idx": idx}, batch_dims=batch_dims)
    bound = analyze(m).bound
    exact = exact_norm(m, x_shape)
    assert bound >= exact * (1 - 1e-9)
    assert bound == pytest.approx(exact, rel=1e-9)


def test_gather_nd_random_indices() -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        idx = rng.integers(-4, 4, size=(int(rng.integers(1, 9)), 2))
        m = one_node("GatherND", (4, 4, 2), {"idx": idx})
        assert analyze(m).bound == pytest.approx(exact_norm(m, (4, 4, 2)), rel=1e-9)


def test_gather_nd_variable_indices_refused() -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
        helper.make_node("GatherND", ["x", "i"], ["y"]),
    ]
    with pytest.raises(UnsupportedModelError):
        analyze(make_model(nodes, [("x", (2, 1))], ["y"]))


def _where(cond: np.ndarray, shapes: tuple, both_variable: bool, const_side: int = 1):
    inits = {"c": cond}
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"])]
    inits["two"] = np.array(2.0, np.float32)
    if both_variable:
        a, b = "x", "x2"
    else:
        inits["k"] = np.full(shapes[1], 7.0, np.float32)
        a, b = ("k", "x2") if const_side == 1 else ("x2", "k")
    nodes.append(helper.make_node("Where", ["c", a, b], ["y"]))
    return make_model(nodes, [("x", shapes[0])], ["y"], inits)


@pytest.mark.parametrize("both", [False, True], ids=["one-branch", "two-branches"])
@pytest.mark.parametrize(
    ("cond", "shapes"),
    [
        pytest.param(np.array([[True, False, True]]), ((1, 3), (1, 3)), id="same-shape"),
        pytest.param(np.array([[True], [False], [False]]), ((1, 3), (3, 3)), id="broadcast-x"),
        pytest.param(np.ones((4, 1), bool), ((1, 3), (1, 3)), id="mask-broadcasts-x-up"),
    ],
)
def test_where_constant_mask_sound_and_tight(cond, shapes, both) -> None:
    m = _where(cond, shapes, both)
    bound = analyze(m).bound
    exact = exact_norm(m, shapes[0])
    assert bound >= exact * (1 - 1e-9)
    if not both:
        assert bound == pytest.approx(exact, rel=1e-9)


def test_where_data_condition_refused() -> None:
    # x > 0 ? x : 1 jumps at 0 (Where(Greater(x, z), x, z) would be max(x, z): Lipschitz, and recognised)
    nodes = [helper.make_node("Greater", ["x", "z"], ["c"]), helper.make_node("Where", ["c", "x", "one"], ["y"])]
    inits = {"z": np.zeros((1, 3), np.float32), "one": np.ones((1, 3), np.float32)}
    with pytest.raises(UnsupportedModelError, match="Greater|Where"):
        analyze(make_model(nodes, [("x", (1, 3))], ["y"], inits))
