"""Index arithmetic around GatherND fused into one linear operator (``lipgraph:LinearRegion``).

Oracle: the exact norm of the model's dense matrix (onnxruntime on basis vectors, float64 SVD).
Near misses (a product of two variable tensors, a variable divisor) are not absorbed; regions too
large for the probe stay with the generic rules, whose bound is sound but looser.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError
from lipgraph.passes import linear_regions
from tests.helpers.onnx_oracle import exact_norm, make_model


def _interp_like(offset: float = 0.0, mask_fill: float = 0.0, n: int = 5):
    """Two gathers of x, their weighted difference added back, masked and shifted (1-D linear
    interpolation plus the masking of adaptive pooling), ending in a Div by per-position counts."""
    i0 = np.array([[0], [0], [1], [2], [2], [3], [4]], np.int64)
    i1 = np.array([[1], [1], [2], [3], [3], [4], [4]], np.int64)
    w = np.linspace(0.1, 0.9, 7).astype(np.float32).reshape(7, 1)
    mask = np.array([[False], [True], [False], [False], [True], [False], [False]])
    inits = {
        "i0": i0,
        "i1": i1,
        "w": w,
        "mask": mask,
        "fill": np.array(mask_fill, np.float32),
        "off": np.array(offset, np.float32),
        "cnt": np.arange(1, 8, dtype=np.float32).reshape(7, 1),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
        helper.make_node("GatherND", ["t", "i0"], ["a"]),
        helper.make_node("GatherND", ["t", "i1"], ["b"]),
        helper.make_node("Sub", ["b", "a"], ["d"]),
        helper.make_node("Mul", ["d", "w"], ["dw"]),
        helper.make_node("Add", ["a", "dw"], ["s"]),
        helper.make_node("Where", ["mask", "fill", "s"], ["m"]),
        helper.make_node("Add", ["m", "off"], ["o"]),
        helper.make_node("Div", ["o", "cnt"], ["y"]),
    ]
    return make_model(nodes, [("x", (2, n))], ["y"], inits)


@pytest.mark.parametrize(("offset", "fill"), [(0.0, 0.0), (1e6, 5.0)], ids=["no-offset", "large-offsets"])
def test_region_is_fused_and_exact(offset: float, fill: float) -> None:
    m = _interp_like(offset, fill)
    a = analyze(m)
    assert "LinearRegion" in [n.op_type for n in a.nodes]
    exact = exact_norm(m, (2, 5))
    assert exact * (1 - 1e-12) <= a.bound <= exact * (1 + 1e-9)


def test_generic_rules_are_looser_and_still_sound(monkeypatch) -> None:
    m = _interp_like()
    monkeypatch.setattr(linear_regions, "MAX_REGION_INPUT", 4)  # the probe is refused: generic rules
    a = analyze(m)
    assert "LinearRegion" not in [n.op_type for n in a.nodes]
    exact = exact_norm(m, (2, 5))
    assert a.bound >= exact * 1.5  # sound, and visibly looser than the fused region


def test_product_of_two_gathers_not_absorbed() -> None:
    idx = np.array([[0], [1]], np.int64)
    nodes = [
        helper.make_node("GatherND", ["x", "i"], ["a"]),
        helper.make_node("GatherND", ["x", "j"], ["b"]),
        helper.make_node("Mul", ["a", "b"], ["y"]),
    ]
    m = make_model(nodes, [("x", (2, 3))], ["y"], {"i": idx, "j": idx[::-1].copy()})
    with pytest.raises(UnsupportedModelError, match="product"):
        analyze(m)


def test_variable_divisor_not_absorbed() -> None:
    idx = np.array([[0], [1]], np.int64)
    nodes = [
        helper.make_node("GatherND", ["x", "i"], ["a"]),
        helper.make_node("Abs", ["a"], ["b"]),
        helper.make_node("Div", ["a", "b"], ["y"]),
    ]
    with pytest.raises(UnsupportedModelError, match="dividing"):
        analyze(make_model(nodes, [("x", (2, 3))], ["y"], {"i": idx}))


def test_intermediate_read_outside_keeps_the_bound_sound() -> None:
    """``s`` feeds both the region's tail and a Relu branch that joins later: two exits, so the region
    shrinks to what feeds the last one, and the join is bounded by the generic Add rule."""
    m = _interp_like()
    g = m.graph
    g.node.append(helper.make_node("Relu", ["s"], ["r"]))
    g.node.append(helper.make_node("Div", ["r", "cnt"], ["r2"]))
    g.node.append(helper.make_node("Add", ["y", "r2"], ["z"]))
    g.output[0].name = "z"
    bound = analyze(m).bound
    from tests.helpers.onnx_oracle import max_jacobian_norm

    assert bound >= max_jacobian_norm(m, (2, 5), n_points=4) * (1 - 1e-6)


def test_layout_ops_and_negative_axes_in_the_batched_probe() -> None:
    """Gather on a negative axis, Unsqueeze/Reshape/Flatten, Concat of two variable parts on axis -1 and a
    Transpose without perm: the probe (every tensor with an extra trailing axis) must reproduce them."""
    inits = {
        "i": np.array([[0, 1], [1, 0]], np.int64),
        "g": np.array([2, 0, 2], np.int64),
        "ax": np.array([0], np.int64),
        "shp": np.array([3, 4], np.int64),
        "w": np.array([[1.0, -2.0, 0.5, 3.0]], np.float32),
    }
    nodes = [
        helper.make_node("GatherND", ["x", "i"], ["a"]),  # (2, 3): rows x[0,1], x[1,0]
        helper.make_node("Gather", ["x", "g"], ["b"], axis=-1),  # (2, 2, 3)
        helper.make_node("Flatten", ["b"], ["bf"], axis=1),  # (2, 6)
        helper.make_node("Unsqueeze", ["a", "ax"], ["au"]),  # (1, 2, 3)
        helper.make_node("Reshape", ["bf", "shp"], ["br"]),  # (3, 4)
        helper.make_node("Transpose", ["br"], ["bt"]),  # (4, 3)
        helper.make_node("Reshape", ["au", "shp2"], ["ar"]),  # (2, 3)
        helper.make_node("Concat", ["ar", "ar"], ["c"], axis=-1),  # (2, 6)
        helper.make_node("Reshape", ["c", "shp"], ["cr"]),  # (3, 4)
        helper.make_node("Transpose", ["cr"], ["ct"]),  # (4, 3)
        helper.make_node("Add", ["ct", "bt"], ["s"]),
        helper.make_node("Transpose", ["s"], ["st"]),  # (3, 4)
        helper.make_node("Mul", ["st", "w"], ["y"]),
    ]
    inits["shp2"] = np.array([2, 3], np.int64)
    m = make_model(nodes, [("x", (2, 2, 3))], ["y"], inits)
    a = analyze(m)
    assert [n.op_type for n in a.nodes] == ["LinearRegion"]
    exact = exact_norm(m, (2, 2, 3))
    assert exact * (1 - 1e-12) <= a.bound <= exact * (1 + 1e-9)
