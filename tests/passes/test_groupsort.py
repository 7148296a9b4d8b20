"""Sorting-unit recognition: exact matches become one node bounded by 1; near misses keep the generic rules.

Oracles: the fused bound must be >= a Jacobian-norm lower estimate of the model (finite
differences in float64), and a near miss must get exactly the generic composition (> 1), never 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from lipgraph.analyze import analyze
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes
from lipgraph.passes.groupsort import recognise_sorting_units
from tests.helpers.onnx_oracle import make_model, max_jacobian_norm, runner
from tests.passes.graphio import op_types

N = 8


def _i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def _fused(model) -> list[str]:
    g = build_graph(model)
    recognise_sorting_units(g)
    g.prune_to_output()
    return op_types(g)


def _check_sound(model, shape=(1, N)) -> float:
    bound = analyze(model).bound
    lower = max_jacobian_norm(model, shape, n_points=4)
    assert bound >= lower * (1 - 1e-6), (bound, lower)
    return bound


# ----------------------------------------------------------------------------- GroupSort (TopK)
def _groupsort(k: int = 4, group: int = 4, axis: int = -1, sorted_: int = 1, use_indices: bool = False):
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r"]),
        helper.make_node("TopK", ["r", "k"], ["v", "idx"], axis=axis, sorted=sorted_),
        helper.make_node("Reshape", ["v", "s2"], ["y"]),
    ]
    outs = ["y"]
    if use_indices:
        nodes.append(helper.make_node("Cast", ["idx"], ["idxf"], to=1))
        nodes.append(helper.make_node("Add", ["y", "idxf_r"], ["z"]))
        nodes.append(helper.make_node("Reshape", ["idxf", "s2"], ["idxf_r"]))
        outs = ["z"]
    inits = {"s1": _i64(1, N // group, group), "k": _i64(k), "s2": _i64(1, N * k // group)}
    return make_model(nodes, [("x", (1, N))], outs, inits)


def test_groupsort_fused_and_bounded_by_one() -> None:
    m = _groupsort()
    assert _fused(m) == ["GroupSort"]
    assert _check_sound(m) == 1.0
    # The unit really sorts groups (the model is what we think it is).
    x = np.random.default_rng(0).standard_normal((1, N)).astype(np.float32)
    y = runner(m)({"x": x})[0]
    np.testing.assert_allclose(y.reshape(2, 4), -np.sort(-x.reshape(2, 4), axis=1))


@pytest.mark.parametrize("kwargs", [{"k": 3}, {"sorted_": 0}])
def test_groupsort_near_miss_not_fused(kwargs) -> None:
    m = _groupsort(**kwargs)
    assert "GroupSort" not in _fused(m)
    if kwargs.get("k") == 3:
        _check_sound(m)  # TopK values alone are still 1-Lipschitz (a restriction of a sort)


def test_groupsort_with_used_indices_not_fused() -> None:
    m = _groupsort(use_indices=True)
    assert "GroupSort" not in _fused(m)


# ----------------------------------------------------------------------------- MaxMin
def _maxmin_split(split_axis=1, cat_axis=1, shape=(1, N), opset=18, n_split=2, min_inputs=("a", "b")):
    outs = ["a", "b", "c"][:n_split]
    split = (helper.make_node("Split", ["x"], outs, axis=split_axis, num_outputs=n_split) if opset >= 18
             else helper.make_node("Split", ["x"], outs, axis=split_axis))
    nodes = [
        split,
        helper.make_node("Max", ["a", "b"], ["mx"]),
        helper.make_node("Min", list(min_inputs), ["mn"]),
        helper.make_node("Concat", ["mx", "mn"], ["y"], axis=cat_axis),
    ]
    return make_model(nodes, [("x", shape)], ["y"], {}, opset=opset)


def _maxmin_slices(r0=(0, 4), r1=(4, 8)):
    nodes = [
        helper.make_node("Slice", ["x", "st0", "en0", "ax"], ["a"]),
        helper.make_node("Slice", ["x", "st1", "en1", "ax"], ["b"]),
        helper.make_node("Max", ["a", "b"], ["mx"]),
        helper.make_node("Min", ["b", "a"], ["mn"]),
        helper.make_node("Concat", ["mx", "mn"], ["y"], axis=1),
    ]
    inits = {"st0": _i64(r0[0]), "en0": _i64(r0[1]), "st1": _i64(r1[0]), "en1": _i64(r1[1]), "ax": _i64(1)}
    return make_model(nodes, [("x", (1, N))], ["y"], inits, opset=17)


@pytest.mark.parametrize("opset", [13, 18])
def test_maxmin_split_fused(opset: int) -> None:
    m = _maxmin_split(opset=opset)
    assert _fused(m) == ["MaxMin"]
    assert _check_sound(m) == 1.0


def test_maxmin_slices_fused_legacy_form() -> None:
    m = _maxmin_slices(r1=(4, 2**62))  # the legacy exporter's open end
    assert _fused(m) == ["MaxMin"]
    assert _check_sound(m) == 1.0


def _generic_maxmin() -> float:
    # Max and Min of two inputs with L = 1 each give sqrt(2); their Concat gives sqrt(2 + 2) = 2.
    return math.sqrt(2 * (math.sqrt(2) ** 2))


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        pytest.param(lambda: _maxmin_slices(r0=(0, 4), r1=(2, 6)), (1, N), id="overlapping-halves"),
        pytest.param(lambda: _maxmin_slices(r0=(0, 3), r1=(3, 6)), (1, N), id="not-covering"),
        pytest.param(lambda: _maxmin_split(shape=(1, 4, 4), split_axis=1, cat_axis=2), (1, 4, 4),
                     id="other-concat-axis"),
        pytest.param(lambda: _maxmin_split(shape=(1, 12), n_split=3, min_inputs=("a", "c")), (1, 12),
                     id="different-tensors"),
    ],
)
def test_maxmin_near_miss_gets_generic_bound(model, shape) -> None:
    m = model()
    assert "MaxMin" not in _fused(m)
    bound = _check_sound(m, shape)
    assert bound == pytest.approx(_generic_maxmin(), rel=1e-12)


# ----------------------------------------------------------------------------- pair-sort
def _pairsort(group=2, axes=(1, 1), cat_axis=1, opset=17, back=(1, N)):
    if opset >= 18:
        rmin = helper.make_node("ReduceMin", ["r", "axmin"], ["lo"], keepdims=1)
        rmax = helper.make_node("ReduceMax", ["r", "axmax"], ["hi"], keepdims=1)
        extra = {"axmin": _i64(axes[0]), "axmax": _i64(axes[1])}
    else:
        rmin = helper.make_node("ReduceMin", ["r"], ["lo"], axes=[axes[0]], keepdims=1)
        rmax = helper.make_node("ReduceMax", ["r"], ["hi"], axes=[axes[1]], keepdims=1)
        extra = {}
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r"]),
        rmin,
        rmax,
        helper.make_node("Concat", ["lo", "hi"], ["c"], axis=cat_axis),
        helper.make_node("Reshape", ["c", "s2"], ["y"]),
    ]
    inits = {"s1": _i64(-1, group), "s2": _i64(*back), **extra}
    return make_model(nodes, [("x", (1, N))], ["y"], inits, opset=opset)


@pytest.mark.parametrize("opset", [17, 18])
def test_pairsort_fused(opset: int) -> None:
    m = _pairsort(opset=opset)
    assert _fused(m) == ["PairSort"]
    assert _check_sound(m) == 1.0
    x = np.random.default_rng(1).standard_normal((1, N)).astype(np.float32)
    np.testing.assert_allclose(runner(m)({"x": x})[0].reshape(4, 2), np.sort(x.reshape(4, 2), axis=1))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"group": 4, "back": (1, 4)}, id="group-of-four"),
        pytest.param({"cat_axis": 0}, id="concat-on-other-axis"),
    ],
)
def test_pairsort_near_miss_generic(kwargs) -> None:
    m = _pairsort(**kwargs)
    assert "PairSort" not in _fused(m)
    bound = _check_sound(m)
    assert bound == pytest.approx(math.sqrt(2), rel=1e-12)  # ReduceMin, ReduceMax 1 each; Concat sqrt(2)


def test_pairsort_layout_not_restored_is_still_a_pair_sort() -> None:
    """The closed form does not match, but the Concat alone sorts each pair (whatever layout follows):
    lipgraph/passes/sorting_variants.py fuses the open form, and the bound is 1 (still >= the truth)."""
    m = _pairsort(back=(2, 4))
    assert "PairSort" not in _fused(m)
    assert _check_sound(m) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- CReLU
def _crelu(neg_src="x", second_relu_src="n", op="Neg"):
    nodes = [
        helper.make_node("Split", ["x"], ["p", "q"], axis=1),
        helper.make_node("Relu", ["x"], ["r1"]),
        helper.make_node(op, [neg_src], ["n"]),
        helper.make_node("Relu", [second_relu_src], ["r2"]),
        helper.make_node("Concat", ["r1", "r2"], ["c"], axis=1),
        # Keep p, q alive only when used, so the graph stays valid either way.
        helper.make_node("Identity", ["c"], ["y"]),
    ]
    return make_model(nodes, [("x", (1, N))], ["y"], {}, opset=17)


def test_crelu_fused() -> None:
    m = _crelu()
    assert "CReLU" in _fused(m)
    assert _check_sound(m) == 1.0


@pytest.mark.parametrize("kwargs", [{"op": "Abs"}, {"second_relu_src": "x"}])
def test_crelu_near_miss_generic(kwargs) -> None:
    m = _crelu(**kwargs)
    assert "CReLU" not in _fused(m)
    assert _check_sound(m) == pytest.approx(math.sqrt(2), rel=1e-12)


def test_intermediate_used_elsewhere_blocks_fusion() -> None:
    """Max's output also read outside the unit: fusing would hide that read; keep the generic rules."""
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1),
        helper.make_node("Max", ["a", "b"], ["mx"]),
        helper.make_node("Min", ["a", "b"], ["mn"]),
        helper.make_node("Concat", ["mx", "mn"], ["c"], axis=1),
        helper.make_node("Concat", ["c", "mx"], ["y"], axis=1),
    ]
    m = make_model(nodes, [("x", (1, N))], ["y"], {}, opset=17)
    assert "MaxMin" not in _fused(m)
    _check_sound(m)


def test_run_passes_fuses_through_default_pipeline() -> None:
    g = build_graph(_maxmin_split())
    run_passes(g)
    assert op_types(g) == ["MaxMin"] and g.nodes[0].domain == "lipgraph"
    assert len(g.nodes[0].origin) == 4  # Split, Max, Min, Concat
