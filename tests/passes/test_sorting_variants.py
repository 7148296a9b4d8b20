"""Sorting units written other ways (lipgraph/passes/sorting_variants.py).

* ``Where(Cmp(p, q), p, q)`` / ``(.., q, p)`` for Greater, GreaterOrEqual, Less, LessOrEqual must be
  rewritten into the Max / Min it computes: the rewritten graph, run by onnxruntime, gives the same
  outputs (ties included), and the MaxMin it forms is bounded by 1.
* A pair sort without its closing Reshape (dynamo, before PixelUnshuffle) is fused; other axes or
  sizes are not.
* Near-misses (a third tensor in a branch, a comparison of other tensors) stay refused / generic.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lipgraph import analyze
from lipgraph.errors import UnsupportedModelError
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes
from lipgraph.passes.sorting_variants import rewrite_where_max_min
from tests.helpers.onnx_oracle import make_model, runner
from tests.passes.graphio import graph_to_model, op_types

CMPS = ["Greater", "GreaterOrEqual", "Less", "LessOrEqual"]


def _where_model(cmp: str, swapped: bool, branches: tuple[str, str] | None = None, cmp_inputs=("a", "b")):
    """x (1, 8) -> Split into a, b -> Where(cmp(a, b), a, b) (or swapped) and its complement -> Concat."""
    t, f = branches or (("b", "a") if swapped else ("a", "b"))
    nodes = [
        helper.make_node("Split", ["x", "split"], ["a", "b"], axis=1),
        helper.make_node("Neg", ["a"], ["c"]),
        helper.make_node(cmp, list(cmp_inputs), ["cond"]),
        helper.make_node("Where", ["cond", t, f], ["m1"]),
        helper.make_node("Where", ["cond", f, t], ["m2"]),
        helper.make_node("Concat", ["m1", "m2"], ["y"], axis=1),
    ]
    return make_model(nodes, [("x", (1, 8))], ["y"], {"split": np.array([4, 4], dtype=np.int64)}, opset=17)


@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize("cmp", CMPS)
def test_where_rewrite_keeps_the_function(cmp: str, swapped: bool) -> None:
    model = _where_model(cmp, swapped)
    g = build_graph(model, None, None)
    rewrite_where_max_min(g)
    g.prune_to_output()
    assert "Where" not in op_types(g) and cmp not in op_types(g)
    ref, new = runner(model), runner(graph_to_model(g))
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(-2, 3, size=(1, 8)).astype(np.float32)  # small integers: many ties
        np.testing.assert_array_equal(ref({"x": x})[0], new({"x": x})[0])


@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize("cmp", CMPS)
def test_where_maxmin_is_bounded_by_one(cmp: str, swapped: bool) -> None:
    a = analyze(_where_model(cmp, swapped))
    assert a.bound == pytest.approx(1.0)
    assert any(n.op_type == "MaxMin" for n in a.nodes)


@pytest.mark.parametrize(
    "kw",
    [
        {"branches": ("a", "c")},  # Where(Greater(a, b), a, -a): neither max nor min
        {"branches": ("c", "b")},
        {"cmp_inputs": ("a", "c")},  # Greater of other tensors than the branches
    ],
    ids=["third-tensor-false", "third-tensor-true", "other-comparison"],
)
def test_where_near_miss_stays_refused(kw: dict) -> None:
    model = _where_model("Greater", False, **kw)
    with pytest.raises(UnsupportedModelError, match="Where|Greater"):
        analyze(model)


def _pairsort_model(axis: int, size2_axis: int = 2, follow: str = "Transpose"):
    """x (1, 4, 3) -> Reshape (1, 2, 2, 3) -> ReduceMax/Min over ``axis`` -> Concat(axis) -> follow."""
    shape = [1, 2, 2, 3] if size2_axis == 2 else [1, 4, 1, 3]
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("ReduceMax", ["r"], ["mx"], axes=[axis], keepdims=1),
        helper.make_node("ReduceMin", ["r"], ["mn"], axes=[axis], keepdims=1),
        helper.make_node("Concat", ["mx", "mn"], ["c"], axis=axis),
        helper.make_node(follow, ["c"], ["y"], perm=[0, 3, 2, 1]),
    ]
    return make_model(nodes, [("x", (1, 4, 3))], ["y"], {"shape": np.array(shape, dtype=np.int64)}, opset=17)


def test_open_pair_sort_is_fused_and_bounded_by_one() -> None:
    a = analyze(_pairsort_model(axis=2))
    assert any(n.op_type == "PairSort" for n in a.nodes)
    assert a.bound == pytest.approx(1.0)


@pytest.mark.parametrize(("axis", "size2_axis"), [(3, 2), (1, 1)], ids=["size-3-axis", "size-4-axis"])
def test_open_pair_sort_other_axis_is_not_fused(axis: int, size2_axis: int) -> None:
    """Reducing over an axis that is not of size 2 is not a pair sort."""
    model = _pairsort_model(axis=axis, size2_axis=size2_axis)
    g = build_graph(model, None, None)
    run_passes(g)
    assert "PairSort" not in op_types(g)
    # the generic rules: ReduceMax, ReduceMin 1 each, joined by Concat: sqrt(2)
    assert analyze(model).bound >= np.sqrt(2) - 1e-9


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_liresnet_minmax_export(dynamo: bool) -> None:
    """torch.where MinMax (LiResNet) between orthogonal linears: the bound is exactly 1."""
    torch = pytest.importorskip("torch")
    from tests.families import export_onnx, jacobian_lower

    class MinMax(torch.nn.Module):
        def forward(self, x):
            a, b = x.chunk(2, dim=1)
            return torch.cat([torch.where(a > b, a, b), torch.where(a > b, b, a)], dim=1)

    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(6, 6), torch.nn.Linear(6, 4)
    with torch.no_grad():
        l1.weight.copy_(torch.linalg.qr(torch.randn(6, 6))[0])
        l2.weight.copy_(torch.linalg.qr(torch.randn(6, 6))[0][:4])
    model = torch.nn.Sequential(l1, MinMax(), l2).eval()
    bound = analyze(export_onnx(model, (1, 6), dynamo)).bound
    lower = jacobian_lower(model, (1, 6), samples=16)
    assert lower * (1 - 1e-6) <= bound <= 1.0 + 1e-5  # float32 weights: ||W|| = 1 + O(1e-7)
    assert bound >= 1.0 - 1e-6  # the Jacobian of an orthogonal net with MaxMin is an isometry on 4 rows
