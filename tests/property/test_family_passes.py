"""Property tests for the family passes: random wrap pads, random linear chains, random Where forms.

Each example is checked against an oracle independent of lipgraph (dense matrices from onnx's float64
reference evaluator, or running both graphs): a fused pattern must give the exact norm, anything else a
bound at least the exact norm -- never the pattern's value on a near-miss.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from lipgraph import analyze
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes
from tests.helpers.onnx_oracle import dense_matrix, make_model, to_float64

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _exact64(model, shape) -> float:
    m = dense_matrix(to_float64(model), shape, backend="reference", dtype=np.float64)
    return float(np.linalg.svd(m, compute_uv=False)[0])


def _secant_lower(model, shape, rng) -> float:
    """Largest secant ratio ``||f(x + t v) - f(x)|| / t`` (a lower estimate of the true constant), v the top
    right singular vector of a finite-difference Jacobian at random x (float64 reference evaluator)."""
    from tests.helpers.onnx_oracle import runner

    run = runner(to_float64(model), backend="reference")
    n = int(np.prod(shape))
    best = 0.0
    for _ in range(3):
        x = rng.standard_normal(shape)
        f0 = run({"x": x})[0].ravel()
        jac = np.stack([(run({"x": x + 1e-7 * e.reshape(shape)})[0].ravel() - f0) / 1e-7 for e in np.eye(n)], 1)
        v = np.linalg.svd(jac)[2][0].reshape(shape)
        t = 1e-5
        best = max(best, float(np.linalg.norm(run({"x": x + t * v})[0].ravel() - f0)) / t)
    return best


def _ops(model) -> list[str]:
    g = build_graph(model, None, None)
    run_passes(g)
    return [n.op_type for n in g.nodes]


@SETTINGS
@given(
    n=st.integers(3, 6),
    k=st.integers(1, 4),
    dil=st.integers(1, 2),
    stride=st.sampled_from([1, 2]),
    extra=st.sampled_from([-1, 0, 0, 0, 1]),  # total pad one short, exact (most often), one long
    split=st.floats(0, 1),
    mode=st.sampled_from(["wrap", "wrap", "wrap", "constant", "reflect", "edge"]),
    seed=st.integers(0, 10_000),
)
def test_wrap_pad_conv(n, k, dil, stride, extra, split, mode, seed) -> None:
    span = (k - 1) * dil + 1
    total = span - 1 + extra
    if total < 0 or total > 2 * n - 2:
        total = span - 1
    b = min(int(round(split * total)), n - 1)
    e = min(total - b, n - 1)
    if mode == "reflect" and (b >= n or e >= n):
        mode = "wrap"
    if n + b + e < span:
        return
    shape = (1, 2, n, n)
    w = np.random.default_rng(seed).standard_normal((2, 2, k, k)).astype(np.float32)
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode=mode),
        helper.make_node("Conv", ["p", "W"], ["y"], kernel_shape=[k, k], strides=[stride] * 2, dilations=[dil] * 2),
    ]
    pads = np.array([0, 0, b, b, 0, 0, e, e], dtype=np.int64)
    model = make_model(nodes, [("x", shape)], ["y"], {"W": w, "pads": pads}, opset=18)
    truth = _exact64(model, shape)
    bound = analyze(model).bound
    exact_case = mode == "wrap" and b + e == span - 1 and n % stride == 0
    assert ("CircularConv" in _ops(model)) == exact_case  # fused exactly when the wrap covers the reach
    assert bound >= truth * (1 - 1e-12)
    if exact_case:
        assert bound <= truth * (1 + 1e-9)


@SETTINGS
@given(
    ops=st.lists(
        st.sampled_from(["MatMul", "Slice", "Transpose", "Relu", "Mul", "Add-branch"]), min_size=2, max_size=5
    ),
    seed=st.integers(0, 10_000),
)
def test_random_linear_chains(ops, seed) -> None:
    """Chains of (mostly) linear ops on a (1, 4, 4) tensor; Relu breaks a region. Sound and, when the
    whole chain is linear, exact."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], {}, "x"
    for i, op in enumerate(ops):
        out = f"t{i}"
        if op == "MatMul":
            inits[f"W{i}"] = rng.standard_normal((4, 4)).astype(np.float32)
            nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [out]))
        elif op == "Slice":  # keep 4 of 4 columns half the time (a Slice that keeps everything)
            keep = int(rng.choice([2, 4]))
            inits.update({f"s{i}": np.array([0], np.int64), f"e{i}": np.array([keep], np.int64)})
            inits[f"a{i}"] = np.array([2], np.int64)
            nodes.append(helper.make_node("Slice", [cur, f"s{i}", f"e{i}", f"a{i}"], [f"u{i}"]))
            pad = np.array([0, 0, 0, 0, 0, 4 - keep], np.int64)
            inits[f"p{i}"] = pad
            nodes.append(helper.make_node("Pad", [f"u{i}", f"p{i}"], [out]))  # back to 4 columns (zeros)
        elif op == "Transpose":
            nodes.append(helper.make_node("Transpose", [cur], [out], perm=[0, 2, 1]))
        elif op == "Relu":
            nodes.append(helper.make_node("Relu", [cur], [out]))
        elif op == "Mul":
            inits[f"c{i}"] = rng.uniform(-2, 2, size=(4,)).astype(np.float32)
            nodes.append(helper.make_node("Mul", [cur, f"c{i}"], [out]))
        else:
            inits[f"W{i}"] = rng.standard_normal((4, 4)).astype(np.float32)
            nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Sub" if rng.random() < 0.5 else "Add", [cur, f"m{i}"], [out]))
        cur = out
    model = make_model(nodes, [("x", (1, 4, 4))], [cur], inits, opset=18)
    bound = analyze(model).bound
    if "Relu" in ops:
        assert bound >= _secant_lower(model, (1, 4, 4), rng) * (1 - 1e-6)
        return
    truth = _exact64(model, (1, 4, 4))
    assert bound >= truth * (1 - 1e-12)
    if _ops(model) == ["LinearMap"]:  # the whole chain composed: exact
        assert bound <= truth * (1 + 1e-9)


@SETTINGS
@given(
    cmp=st.sampled_from(["Greater", "GreaterOrEqual", "Less", "LessOrEqual"]),
    cmp_in=st.tuples(st.sampled_from("abc"), st.sampled_from("abc")),
    branches=st.tuples(st.sampled_from("abc"), st.sampled_from("abc")),
    seed=st.integers(0, 1000),
)
def test_where_forms(cmp, cmp_in, branches, seed) -> None:
    """Where(cmp(p, q), u, v) over tensors a, b, c: rewritten only when {u, v} = {p, q} (p != q), and the
    rewritten graph computes the same values; otherwise still refused."""
    from lipgraph.errors import UnsupportedModelError
    from lipgraph.passes.sorting_variants import rewrite_where_max_min
    from tests.helpers.onnx_oracle import runner
    from tests.passes.graphio import graph_to_model, op_types

    nodes = [
        helper.make_node("Split", ["x", "split"], ["a", "b", "c"], axis=1),
        helper.make_node(cmp, list(cmp_in), ["cond"]),
        helper.make_node("Where", ["cond", *branches], ["y"]),
    ]
    model = make_model(nodes, [("x", (1, 6))], ["y"], {"split": np.array([2, 2, 2], np.int64)}, opset=17)
    matches = cmp_in[0] != cmp_in[1] and sorted(branches) == sorted(cmp_in)
    g = build_graph(model, None, None)
    rewrite_where_max_min(g)
    g.prune_to_output()
    assert ("Where" not in op_types(g)) == matches
    if matches:
        x = np.random.default_rng(seed).integers(-2, 3, size=(1, 6)).astype(np.float32)
        np.testing.assert_array_equal(runner(model)({"x": x})[0], runner(graph_to_model(g))({"x": x})[0])
        assert analyze(model).bound <= np.sqrt(2) + 1e-9
    elif branches[0] != branches[1]:
        try:
            analyze(model)
        except UnsupportedModelError:
            pass
        else:
            raise AssertionError("a Where that is neither max nor min was bounded")
