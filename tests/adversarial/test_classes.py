"""One test per class of soundness hole from the adversarial corpus (issue 15), against exact oracles.

Each model is small; the truth is the exact dense matrix from ONNX Runtime (linear maps) or a secant
lower estimate from ONNX Runtime's outputs. A bound must be at least the truth, or the model refused.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from lipgraph import analyze, certify
from lipgraph.errors import LipgraphError, ModelLoadError, UnsupportedModelError
from lipgraph.rules.registry import all_rules
from tests.adversarial import cases as C
from tests.adversarial.oracle import lower_estimate, sound
from tests.helpers.onnx_oracle import exact_norm

pytestmark = pytest.mark.filterwarnings("ignore")


# ---------------------------------------------------------------- class 1
def test_pow_whose_exponent_broadcasts_x_up_counts_the_copies() -> None:
    model, xs = C.pow_broadcast()
    exact = exact_norm(model, xs)
    assert exact == pytest.approx(np.sqrt(3), rel=1e-9)
    assert analyze(model).bound >= exact * (1 - 1e-9)


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1, 2, 1, 1), (2, 2, 1, 2)])
def test_prelu_whose_slope_broadcasts_x_up_counts_the_copies(slope_shape: tuple[int, ...]) -> None:
    """ONNX's shape inference gives PRelu x's shape (its specification), ONNX Runtime broadcasts both
    ways: the copies must be counted, and the wrong shapes after the node must not be used (refused)."""
    model, xs = C.prelu_broadcast(slope_shape)
    low, f64 = lower_estimate(model, xs, n_points=4)
    assert low > 1.2  # the copies are real: the oracle sees more than the per-element slope
    try:
        bound = analyze(model).bound
    except UnsupportedModelError as exc:
        assert "broadcast" in str(exc)
    else:
        assert sound(bound, low, f64)


def test_prelu_per_channel_slope_stays_exact() -> None:
    """A slope no larger than x makes no copies: the bound keeps ``max(1, max|slope|)``."""
    model, _ = C.prelu_broadcast((1, 2, 2))
    assert analyze(model).bound == pytest.approx(1.0)


def _schema_broadcasts(op: str, opset: int) -> bool:
    try:
        schema = onnx.defs.get_schema(op, opset, "")
    except Exception:  # noqa: BLE001 - not an ONNX op at that opset
        return False
    return len(schema.inputs) >= 2 and "broadcast" in (schema.doc or "").lower()


# Rules that count broadcast copies themselves (Add's sqrt(k), Mul's per-copy scales, Gemm's C,
# Expand and Tile their repeats), and ops whose broadcasting is unidirectional onto the variable input
# (LayerNormalization's Scale and B: the output has X's shape; ONNX Runtime rejects a larger Scale).
_OWN_BROADCAST = {
    "Add",
    "Sub",
    "Sum",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Mean",
    "Expand",
    "Tile",
    "Gemm",
    "LayerNormalization",
    "RMSNormalization",
    "Where",  # counts the copies of each branch from the constant mask's shape
}


def test_every_rule_of_a_broadcasting_op_counts_copies() -> None:
    """Audit of the registry: an op whose ONNX schema broadcasts its inputs either is flagged (the
    registry multiplies by sqrt(copies)), counts copies in its own rule, or is always refused."""
    missing = []
    for spec in all_rules():
        if spec.domain != "ai.onnx" or spec.broadcasts or spec.op_type in _OWN_BROADCAST:
            continue
        if spec.family == "activations" and spec.fn.__name__ == "not_lipschitz":
            continue
        if any(_schema_broadcasts(spec.op_type, v) for v in range(max(spec.since, 1), 25)):
            missing.append(spec.op_type)
    assert not missing, f"rules that treat a broadcasting op as unary without counting copies: {missing}"


# ---------------------------------------------------------------- class 2
def test_l2_pooling_with_a_broadcasting_scale_is_not_recognised() -> None:
    model, xs = C.l2_pool_chain(4 * np.ones((1, 3, 1, 1)))
    low, f64 = lower_estimate(model, xs)
    assert low > 1.5  # sqrt(3): three copies of each window norm
    try:
        bound = analyze(model).bound
    except UnsupportedModelError:
        return  # the Pow rule refuses once the chain is not recognised
    assert sound(bound, low, f64)


@pytest.mark.parametrize("which", ["exponent", "root"])
def test_l2_pooling_with_broadcasting_exponents_is_not_recognised(which: str) -> None:
    shaped = np.full((1, 3, 1, 1), 2.0 if which == "exponent" else 0.5, np.float32)
    model, xs = C.l2_pool_chain(np.array(4.0), **{which: shaped})
    with pytest.raises(UnsupportedModelError, match="Pow"):
        analyze(model)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1, 1), (1, 1, 2, 2), (2,)])
def test_l2_pooling_near_misses_that_keep_the_shape_are_recognised(shape: tuple[int, ...]) -> None:
    """Size-1 constants and constants that leave the shape unchanged are scalars in effect."""
    model, xs = C.l2_pool_chain(np.full(shape, 4.0))
    a = analyze(model)
    assert any(n.op_type == "LpPool" for n in a.nodes)
    low, f64 = lower_estimate(model, xs)
    assert sound(a.bound, low, f64) and a.bound == pytest.approx(1.0, rel=1e-9)


# ---------------------------------------------------------------- class 3
@pytest.mark.parametrize("lie", ["output", "value_info"])
def test_conv_on_a_declared_fake_grid_is_refused(lie: str) -> None:
    model, _ = C.conv_on_fake_grid(lie)
    with pytest.raises(ModelLoadError, match="declared with shape"):
        analyze(model)


def test_conv_without_the_lie_is_bounded_on_the_real_grid() -> None:
    model, xs = C.conv_on_fake_grid("none")
    low, f64 = lower_estimate(model, xs)
    assert sound(analyze(model).bound, low, f64)


def test_certify_refuses_the_lying_model() -> None:
    """certify strips extra outputs before running: the lie must stop it, not pass a gate."""
    model, xs = C.conv_on_fake_grid("output")
    x = np.random.default_rng(0).standard_normal((4, *xs[1:])).astype(np.float32)
    with pytest.raises(ModelLoadError):
        certify(model, x, np.zeros(4, np.int64))


def test_expand_declared_as_no_broadcast_is_refused() -> None:
    model, xs = C.expand_declared_unbroadcast(lie=True)
    with pytest.raises(ModelLoadError, match="'e'"):
        analyze(model)
    honest, _ = C.expand_declared_unbroadcast(lie=False)
    assert analyze(honest).bound >= exact_norm(honest, xs) * (1 - 1e-9)


def test_topk_indices_declared_float_are_still_integers() -> None:
    model, _ = C.topk_indices_as_float(declare=True)
    with pytest.raises(ModelLoadError, match="INT64"):
        analyze(model)


def test_topk_indices_on_the_data_path_are_refused_even_without_types() -> None:
    model, _ = C.topk_indices_as_float(declare=False)
    with pytest.raises(UnsupportedModelError):
        analyze(model)
    # without type information at all, the TopK rule itself refuses its indices on the data path
    from lipgraph.graph_build import build_graph
    from lipgraph.rules.registry import RuleContext, lookup

    g = build_graph(model)
    for t in g.tensors.values():
        t.elem_type = None
    topk = next(n for n in g.nodes if n.op_type == "TopK")
    with pytest.raises(Exception, match="indices"):
        lookup("ai.onnx", "TopK", 17).fn(RuleContext(topk, g, [1.0, None]))  # type: ignore[union-attr]


def test_a_truthful_extra_output_is_accepted() -> None:
    model, xs = C.conv_on_fake_grid("none")
    model.graph.output.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [1, 1, 8, 8]))
    assert analyze(model).bound == pytest.approx(analyze(C.conv_on_fake_grid("none")[0]).bound, rel=1e-12)


# ---------------------------------------------------------------- class 5
@pytest.mark.parametrize("opset", [10, 2])
@pytest.mark.parametrize("mode", ["edge", "reflect", "constant"])
@pytest.mark.parametrize("pads", [[0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 2, 0, 0, 0, 0, 2], [0, 0, -1, 1, 0, 0, 0, 0]])
def test_pad_attribute_form_against_ort(opset: int, mode: str, pads: list[int]) -> None:
    model, xs = C.pad_attribute(opset, mode, pads)
    exact = exact_norm(model, xs)
    assert analyze(model).bound == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("mode", ["edge", "reflect"])
def test_pad_opset1_paddings_attribute(mode: str) -> None:
    """ONNX Runtime has no Pad-1 kernel: the oracle is numpy's pad (the same definition)."""
    model, xs = C.pad_attribute(1, mode, [0, 0, 1, 1, 0, 0, 1, 1])
    n = int(np.prod(xs))
    cols = [np.pad(np.eye(n)[j].reshape(xs), [(0, 0), (0, 0), (1, 1), (1, 1)], mode=mode).ravel() for j in range(n)]
    exact = float(np.linalg.svd(np.stack(cols, 1), compute_uv=False)[0])
    assert analyze(model).bound == pytest.approx(exact, rel=1e-9)


def test_pad_without_its_amounts_is_refused() -> None:
    model, _ = C.pad_attribute(10, "edge", [0, 0, 1, 1, 0, 0, 1, 1])
    del model.graph.node[0].attribute[:]
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("mode", "edge"))
    with pytest.raises(UnsupportedModelError, match="pads"):
        analyze(model)


# ---------------------------------------------------------------- class 6
def test_slice_of_a_symbolic_axis_is_not_assumed_unbroadcast() -> None:
    model, xs = C.add_first_row()
    concrete, _ = C.add_first_row(8, 8)
    exact = exact_norm(concrete, xs)
    assert exact == pytest.approx(3.41421356, rel=1e-6)
    try:
        bound = analyze(model).bound
    except UnsupportedModelError as exc:
        assert "--input-shape" in str(exc)
    else:
        assert bound >= exact * (1 - 1e-9)
    assert analyze(model, input_shape=xs).bound >= exact * (1 - 1e-9)
    assert analyze(concrete).bound >= exact * (1 - 1e-9)


# ---------------------------------------------------------------- class 8
def test_unsorted_export_gets_the_same_bound() -> None:
    torch = pytest.importorskip("torch")
    import io

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 2, 3, stride=2),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 3 * 3, 4),
    ).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 1, 8, 8),), buf, dynamo=False, input_names=["x"])
    model = onnx.load_from_string(buf.getvalue())
    sorted_bound = analyze(model).bound
    for seed in range(3):
        assert analyze(C.shuffled(model, seed)).bound == sorted_bound


def test_unsorted_graph_with_shape_arithmetic() -> None:
    """Out-of-order nodes before a Reshape whose target is computed: every shape must still be known."""
    from onnx import helper

    from tests.helpers.onnx_oracle import make_model

    w = np.random.default_rng(1).standard_normal((2, 1, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Concat", ["n1", "m1"], ["tgt"], axis=0),
        helper.make_node("Reshape", ["c", "tgt"], ["y"]),
    ]
    inits = {"w": w, "zero": np.array(0, np.int64), "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64)}
    model = make_model(nodes, [("x", [1, 1, 6, 6])], ["y"], inits)
    ref = analyze(model).bound
    for seed in range(4):
        assert analyze(C.shuffled(model, seed)).bound == ref


@pytest.mark.parametrize("seed", range(4))
def test_unsorted_residual_join_keeps_its_shapes(seed: int) -> None:
    """A join read before its operands are produced: shape inference in file order would leave the
    operands' shapes unknown (refused before the fix); sorted first, the bound is the sorted one."""
    from onnx import helper

    from tests.helpers.onnx_oracle import make_model

    w = np.random.default_rng(1).standard_normal((2, 1, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["c2"]),
        helper.make_node("Add", ["c2", "c"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 1, 6, 6])], ["y"], {"w": w})
    assert analyze(C.shuffled(model, seed)).bound == analyze(model).bound


def test_lying_models_do_not_reach_a_certificate() -> None:
    """End to end: certify on the Expand lie refuses instead of issuing radii."""
    model, xs = C.expand_declared_unbroadcast(lie=True)
    x = np.random.default_rng(0).standard_normal((8, *xs[1:])).astype(np.float32)
    with pytest.raises(LipgraphError):
        certify(model, x, np.zeros(8, np.int64))


# ---------------------------------------------------------------- certify + exact attack
def _broadcast_classifier(seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """``x[1,4] -> Pow(x, ones(3,1,4)) -> Reshape(1,12) -> Gemm(3 logits)``: linear, three copies of x."""
    from onnx import helper

    from tests.helpers.onnx_oracle import make_model

    w = np.random.default_rng(seed).standard_normal((3, 12)).astype(np.float32)
    nodes = [
        helper.make_node("Pow", ["x", "p"], ["c"]),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    inits = {"p": np.ones((3, 1, 4), np.float32), "shape": np.array([1, 12], np.int64), "w": w}
    model = make_model(nodes, [("x", [1, 4])], ["y"], inits)
    # the map as a 3x4 matrix: each x_j feeds three columns of w
    return model, w.reshape(3, 3, 4).sum(axis=1).astype(np.float64)


def test_certified_radii_of_a_broadcasting_classifier_survive_the_exact_attack() -> None:
    """For a linear classifier the smallest flipping perturbation is known exactly: each radius must be
    at most it, and ONNX Runtime at 0.999 r along that direction must keep the prediction."""
    from tests.helpers.onnx_oracle import runner

    model, a = _broadcast_classifier()
    x = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    logits = x.astype(np.float64) @ a.T
    labels = logits.argmax(1)
    cert = certify(model, x[:, None, :].reshape(64, 4), labels)
    run = runner(model)
    checked = 0
    for i in range(64):
        y, r = int(labels[i]), float(cert.radii[i])
        if not cert.correct[i] or r <= 0:
            continue
        for j in range(3):
            if j == y:
                continue
            g = a[y] - a[j]
            dist = (logits[i, y] - logits[i, j]) / np.linalg.norm(g)
            assert r <= dist * (1 + 1e-6), (i, r, dist)
            xa = (x[i] - 0.999 * r * g / np.linalg.norm(g)).astype(np.float32)
            assert int(run({"x": xa[None]})[0].argmax()) == y
            checked += 1
    assert checked > 50


def test_expand_to_a_symbolic_target_is_not_assumed_unbroadcast() -> None:
    """``Expand(x[:, :1], Shape(x))`` on symbolic sizes: the target's values are unknown and the length-1
    slice is copied S1 times; the target input's own shape (its rank) proves nothing."""
    from onnx import helper

    from tests.helpers.onnx_oracle import make_model

    nodes = [
        helper.make_node("Slice", ["x", "s", "e", "a"], ["sl"]),
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Expand", ["sl", "sh"], ["y"]),
    ]
    inits = {"s": np.array([0]), "e": np.array([1]), "a": np.array([1])}
    model = make_model(nodes, [("x", [1, "S1", "S2"])], ["y"], inits)
    with pytest.raises(UnsupportedModelError, match="--input-shape"):
        analyze(model)
    concrete = make_model(nodes, [("x", [1, 4, 3])], ["y"], inits)
    assert analyze(model, input_shape=(1, 4, 3)).bound >= exact_norm(concrete, (1, 4, 3)) * (1 - 1e-9)


class _PowCopies:
    """``x ** ones(3, 1, 4)`` then a Linear: torch broadcasts x up through a constant exponent."""

    @staticmethod
    def build():  # noqa: ANN205 - a torch module, torch imported lazily
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("p", torch.ones(3, 1, 4))
                self.fc = torch.nn.Linear(12, 3)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.fc((x**self.p).reshape(x.shape[0], -1))

        torch.manual_seed(0)
        return Net().eval()


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_real_export_of_a_broadcasting_pow(dynamo: bool) -> None:
    torch = pytest.importorskip("torch")
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_PowCopies.build(), (torch.randn(1, 4),), buf, dynamo=dynamo, input_names=["x"])
    model = onnx.load_from_string(buf.getvalue())
    assert any(n.op_type == "Pow" for n in model.graph.node)
    exact = exact_norm(model, (1, 4))
    a = analyze(model)
    assert a.bound >= exact * (1 - 1e-7)
    # the Pow node counts the three copies of x (the linear layer alone may even exceed the truth)
    assert any(n.op_type == "Pow" and n.bound == pytest.approx(np.sqrt(3)) for n in a.nodes)
