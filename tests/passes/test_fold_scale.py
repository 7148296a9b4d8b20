"""Scale folding: the rewritten graph computes the same function (run by onnxruntime), the folded
bound equals the exact norm of the folded operator and is >= the model's true constant (dense
matrix or Jacobian lower estimate); near misses (wrong axis, full-shape constants, extra readers,
non-contractive activations) are left alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lipgraph.analyze import analyze
from lipgraph.graph_build import build_graph
from lipgraph.passes.fold_scale import fold_scales
from lipgraph.rules.registry import lookup
from tests.helpers.onnx_oracle import exact_norm, make_model, max_jacobian_norm, runner, spectral
from tests.passes.graphio import graph_to_model, op_types

RNG = np.random.default_rng(7)
F32 = np.float32


def _folded(model):
    g = build_graph(model)
    fold_scales(g)
    g.prune_to_output()
    return g


def _same_function(model, g, shape, n=3) -> None:
    orig, new = runner(model), runner(graph_to_model(g))
    for _ in range(n):
        x = RNG.standard_normal(shape).astype(F32)
        np.testing.assert_allclose(new({"x": x})[0], orig({"x": x})[0], rtol=2e-4, atol=2e-4)


def _bn_params(c: int, negative: bool = False) -> dict[str, np.ndarray]:
    gamma = RNG.uniform(0.2, 3.0, c)
    if negative:
        gamma[::2] *= -1
    return {
        "gamma": gamma.astype(F32),
        "beta": RNG.uniform(-1, 1, c).astype(F32),
        "mean": RNG.uniform(-1, 1, c).astype(F32),
        "var": RNG.uniform(0.1, 4.0, c).astype(F32),
    }


def _bn_scale(p: dict[str, np.ndarray], eps: float = 1e-5) -> np.ndarray:
    return p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + eps)


def _bn(x: str, y: str) -> helper.NodeProto:
    return helper.make_node("BatchNormalization", [x, "gamma", "beta", "mean", "var"], [y], epsilon=1e-5)


# ----------------------------------------------------------------------------- post-fold
def test_gemm_then_bn_folds_to_one_gemm() -> None:
    w = RNG.standard_normal((5, 6)).astype(F32)
    p = _bn_params(5)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1, alpha=0.5), _bn("h", "y")]
    m = make_model(nodes, [("x", (1, 6))], ["y"], {"W": w, "b": RNG.standard_normal(5).astype(F32), **p})
    g = _folded(m)
    assert op_types(g) == ["Gemm"]
    assert set(g.nodes[0].origin) == {"Gemm_0", "BatchNormalization_1"}
    _same_function(m, g, (1, 6))
    bound = analyze(m).bound
    s = _bn_scale(p)
    truth = exact_norm(m, (1, 6))
    assert bound >= truth * (1 - 1e-6)
    assert bound == pytest.approx(spectral(0.5 * s[:, None] * w), rel=1e-6)
    # The folded norm is below the layer-wise product (the reason to fold).
    assert bound < 0.5 * spectral(w) * np.abs(s).max()


def test_matmul_then_per_channel_mul_and_add() -> None:
    w = RNG.standard_normal((6, 4)).astype(F32)
    c = RNG.uniform(-2, 2, (1, 4)).astype(F32)
    t = RNG.standard_normal(4).astype(F32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Mul", ["c", "h"], ["k"]),
             helper.make_node("Add", ["k", "t"], ["y"])]
    m = make_model(nodes, [("x", (1, 3, 6))], ["y"], {"W": w, "c": c, "t": t})
    g = _folded(m)
    assert op_types(g) == ["MatMul", "Add"]
    _same_function(m, g, (1, 3, 6))
    bound = analyze(m).bound
    assert bound >= exact_norm(m, (1, 3, 6)) * (1 - 1e-6)
    assert bound == pytest.approx(spectral(w * c), rel=1e-6)


def test_conv_bn_folds() -> None:
    w = RNG.standard_normal((4, 3, 3, 3)).astype(F32)
    p = _bn_params(4)
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"], pads=[1, 1, 1, 1]), _bn("h", "y")]
    m = make_model(nodes, [("x", (1, 3, 5, 5))], ["y"], {"W": w, **p})
    g = _folded(m)
    assert op_types(g) == ["Conv"]
    _same_function(m, g, (1, 3, 5, 5))
    if lookup("ai.onnx", "Conv", 17) is None:
        pytest.skip("no Conv rule yet")
    assert analyze(m).bound >= exact_norm(m, (1, 3, 5, 5)) * (1 - 1e-6)


# ----------------------------------------------------------------------------- pre-fold
def test_input_normalisation_before_conv() -> None:
    mean = np.array([0.5, 0.4, 0.3], F32).reshape(1, 3, 1, 1)
    std = np.array([0.25, 0.2, 0.3], F32).reshape(1, 3, 1, 1)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(F32)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["a"]), helper.make_node("Div", ["a", "std"], ["b"]),
             helper.make_node("Conv", ["b", "W"], ["y"], pads=[1, 1, 1, 1])]
    m = make_model(nodes, [("x", (1, 3, 5, 5))], ["y"], {"W": w, "mean": mean, "std": std})
    g = _folded(m)
    assert op_types(g) == ["Sub", "Conv"]  # the shift stays (it does not change the bound)
    _same_function(m, g, (1, 3, 5, 5))
    if lookup("ai.onnx", "Conv", 17) is None:
        pytest.skip("no Conv rule yet")
    bound = analyze(m).bound
    truth = exact_norm(m, (1, 3, 5, 5))
    assert truth * (1 - 1e-6) <= bound


def test_bn_before_gemm_with_shift_and_groups_of_readers() -> None:
    """BN output read by two Gemms: both absorb the scale; the shift becomes one Add(t/s) before them."""
    p = _bn_params(6)
    w1, w2 = RNG.standard_normal((6, 5)).astype(F32), RNG.standard_normal((3, 6)).astype(F32)
    nodes = [_bn("x", "h"), helper.make_node("Gemm", ["h", "W1"], ["y1"]),
             helper.make_node("Gemm", ["h", "W2"], ["y2"], transB=1),
             helper.make_node("Concat", ["y1", "y2"], ["y"], axis=1)]
    m = make_model(nodes, [("x", (1, 6))], ["y"], {"W1": w1, "W2": w2, **p})
    g = _folded(m)
    assert op_types(g).count("BatchNormalization") == 0 and op_types(g).count("Add") == 1
    _same_function(m, g, (1, 6))
    s = _bn_scale(p)
    expect = np.hypot(spectral(s[:, None] * w1), spectral(w2 * s[None, :]))
    bound = analyze(m).bound
    assert bound == pytest.approx(expect, rel=1e-6)
    assert bound >= exact_norm(m, (1, 6)) * (1 - 1e-6)


# ----------------------------------------------------------------------------- across an activation
def test_bn_relu_gemm_exact_rewrite() -> None:
    p = _bn_params(6)
    w = RNG.standard_normal((4, 6)).astype(F32)
    nodes = [_bn("x", "h"), helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Gemm", ["r", "W"], ["y"],
                                                                                       transB=1)]
    m = make_model(nodes, [("x", (1, 6))], ["y"], {"W": w, **p})
    g = _folded(m)
    assert op_types(g) == ["Add", "Relu", "Gemm"]
    _same_function(m, g, (1, 6))
    a = analyze(m)
    s = _bn_scale(p)
    assert a.bound == pytest.approx(spectral(w * s[None, :]), rel=1e-6)
    assert a.bound >= max_jacobian_norm(m, (1, 6), n_points=6) * (1 - 1e-6)
    assert not any("bound-only" in w_ for w_ in a.warnings)


@pytest.mark.parametrize("act", ["Tanh", "Relu", "LeakyRelu"])
def test_negative_scale_across_activation_uses_abs(act: str) -> None:
    p = _bn_params(6, negative=True)
    w = RNG.standard_normal((4, 6)).astype(F32)
    nodes = [_bn("x", "h"), helper.make_node(act, ["h"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])]
    m = make_model(nodes, [("x", (1, 6))], ["y"], {"W": w.T.copy(), **p})
    a = analyze(m)
    s = _bn_scale(p)
    assert a.bound == pytest.approx(spectral(w * np.abs(s)[None, :]), rel=1e-6)
    assert any("bound-only" in w_ for w_ in a.warnings)
    # Soundness against the model itself, at points where the activation is in its steep part.
    pts = [RNG.standard_normal(6) * 0.3 for _ in range(6)]
    assert a.bound >= max_jacobian_norm(m, (1, 6), points=pts) * (1 - 1e-6)


@pytest.mark.parametrize("negative", [False, True])
def test_bound_only_rewrite_hides_the_activation_from_structural_passes(negative: bool) -> None:
    """After ``f(x) -> A diag(|s|)`` the activation's effective slope is ``sign(s) f'``, in [-1, 1]:
    passes that rely on slopes in [0, 1] (sandwich certificates, the per-pair chain) must not see it."""
    from lipgraph.chain import _slope_in_unit_interval
    from lipgraph.passes.sandwiches import slopes_in_unit_interval

    p = _bn_params(6, negative=negative)
    w = RNG.standard_normal((4, 6)).astype(F32)
    nodes = [_bn("x", "h"), helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])]
    g = _folded(make_model(nodes, [("x", (1, 6))], ["y"], {"W": w.T.copy(), **p}))
    relu = next(n for n in g.nodes if n.op_type == "Relu")
    assert relu.bound_only is negative
    assert slopes_in_unit_interval(g, relu) is not negative
    assert _slope_in_unit_interval(relu) is not negative


# ----------------------------------------------------------------------------- near misses
def _conv_after_mul(c: np.ndarray):
    w = RNG.standard_normal((2, 4, 3, 3)).astype(F32)
    nodes = [helper.make_node("Mul", ["x", "c"], ["h"]), helper.make_node("Conv", ["h", "W"], ["y"])]
    return make_model(nodes, [("x", (1, 4, 4, 4))], ["y"], {"W": w, "c": c.astype(F32)})


@pytest.mark.parametrize(
    "c",
    [
        pytest.param(RNG.uniform(0.5, 2, (4,)), id="vector-on-width-axis"),
        pytest.param(RNG.uniform(0.5, 2, (1, 1, 1, 4)), id="width-axis"),
        pytest.param(RNG.uniform(0.5, 2, (4, 4, 1)), id="two-axes"),
        pytest.param(RNG.uniform(0.5, 2, (1, 4, 4, 4)), id="full-shape"),
    ],
)
def test_mul_not_per_channel_is_not_folded(c: np.ndarray) -> None:
    g = _folded(_conv_after_mul(c))
    assert op_types(g) == ["Mul", "Conv"]


def test_per_channel_mul_is_folded_into_conv() -> None:
    m = _conv_after_mul(RNG.uniform(0.5, 2, (4, 1, 1)))
    g = _folded(m)
    assert op_types(g) == ["Conv"]
    _same_function(m, g, (1, 4, 4, 4))


def test_linear_output_read_twice_is_not_post_folded() -> None:
    p = _bn_params(5)
    w = RNG.standard_normal((5, 6)).astype(F32)
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1), _bn("h", "k"),
             helper.make_node("Add", ["h", "k"], ["y"])]
    m = make_model(nodes, [("x", (1, 6))], ["y"], {"W": w, **p})
    assert op_types(_folded(m)) == ["Gemm", "BatchNormalization", "Add"]
    assert analyze(m).bound >= exact_norm(m, (1, 6)) * (1 - 1e-6)


@pytest.mark.parametrize("residual", [True, False])
def test_activation_with_a_nonlinear_reader_is_not_folded_across(residual: bool) -> None:
    p = _bn_params(6)
    w = RNG.standard_normal((6, 6)).astype(F32)
    act = "Relu" if residual else "Sigmoid"
    nodes = [_bn("x", "h"), helper.make_node(act, ["h"], ["r"]), helper.make_node("Gemm", ["r", "W"], ["g"])]
    nodes.append(helper.make_node("Add", ["g", "r"] if residual else ["g", "x"], ["y"]))
    m = make_model(nodes, [("x", (1, 6))], ["y"], {"W": w, **p})
    ops = op_types(_folded(m))
    assert "BatchNormalization" in ops
    a = analyze(m)
    assert a.bound >= max_jacobian_norm(m, (1, 6), n_points=4) * (1 - 1e-6)


def test_pure_shift_before_gemm_terminates_and_stays() -> None:
    w = RNG.standard_normal((6, 3)).astype(F32)
    nodes = [helper.make_node("Add", ["x", "t"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W"], ["y"])]
    m = make_model(nodes, [("x", (1, 6))], ["y"], {"W": w, "t": RNG.standard_normal(6).astype(F32)})
    assert op_types(_folded(m)) == ["Add", "Relu", "Gemm"]
