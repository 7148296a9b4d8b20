"""Graph building and folding on what real exporters write (issue 2, items 2 and 3).

Oracles: exact SVD norms of the weights (for an MLP whose activations have |f'| <= 1 the rule
composition is exactly the product of the layer norms) and secant-ratio lower estimates of the
model's Lipschitz constant computed by running the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph import analyze
from lipgraph.errors import ModelLoadError
from lipgraph.graph_build import build_graph
from lipgraph.rules.registry import lookup
from tests.helpers.onnx_oracle import exact_norm, make_model, max_jacobian_norm, spectral

RNG = np.random.default_rng(1)
W1 = RNG.standard_normal((6, 12)).astype(np.float32)  # Gemm with transB=1: x (., 12) -> (., 6)
B1 = RNG.standard_normal(6).astype(np.float32)
W2 = RNG.standard_normal((6, 3)).astype(np.float32)  # MatMul x (., 6) @ W2 -> (., 3)
PRODUCT = spectral(W1) * spectral(W2)
TOL = 1 + 1e-6


def _mlp_nodes(opset: int) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Flatten-by-Reshape (shape given as an input, opset >= 5) -> Gemm -> Relu -> MatMul."""
    inits = {"W1": W1, "B1": B1, "W2": W2, "shape": np.array([-1, 12], dtype=np.int64)}
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "W1", "B1"], ["h"], name="fc1", transB=1, alpha=1.0, beta=1.0),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2"),
    ]
    return nodes, inits


def _assert_mlp_bound(model: onnx.ModelProto, x_shape: list[int], oracle: onnx.ModelProto | None = None) -> float:
    a = analyze(model)
    assert PRODUCT <= a.bound <= PRODUCT * TOL
    lower = max_jacobian_norm(oracle or model, x_shape, n_points=3)
    assert lower <= a.bound * TOL
    return a.bound


@pytest.mark.parametrize("opset", [7, 8, 9, 11, 13, 17, 18, 19, 20, 21])
def test_mlp_across_opsets(opset: int) -> None:
    nodes, inits = _mlp_nodes(opset)
    model = make_model(nodes, [("x", ["N", 3, 4])], ["y"], inits, opset=opset)
    _assert_mlp_bound(model, [1, 3, 4])


def test_nodes_out_of_topological_order() -> None:
    nodes, inits = _mlp_nodes(13)
    model = make_model(list(reversed(nodes)), [("x", ["N", 3, 4])], ["y"], inits, opset=13)
    g = build_graph(model)
    seen = {"x"}
    for n in g.nodes:  # every variable input is produced before it is read
        assert all(i in seen or not g.is_variable(i) for i in n.inputs if i), n.name
        seen.update(n.outputs)
    # onnx's evaluator needs sorted nodes; run the oracle on the sorted twin.
    _assert_mlp_bound(model, [1, 3, 4], oracle=make_model(nodes, [("x", ["N", 3, 4])], ["y"], inits, opset=13))


def test_initializers_listed_as_inputs_opset8() -> None:
    nodes, inits = _mlp_nodes(8)
    model = make_model(nodes, [("x", [1, 3, 4])], ["y"], inits, opset=8)
    for name, arr in inits.items():
        dtype = helper.np_dtype_to_tensor_dtype(arr.dtype)
        model.graph.input.append(helper.make_tensor_value_info(name, dtype, list(arr.shape)))
    assert analyze(model).input_name == "x"
    _assert_mlp_bound(model, [1, 3, 4])


@pytest.mark.parametrize("x_shape", [[1, 3, 4], [5, 3, 4], ["N", 3, 4], ["batch", "c", "w"], [None, 3, 4]])
def test_fixed_and_symbolic_dims(x_shape: list) -> None:
    nodes, inits = _mlp_nodes(13)
    model = make_model(nodes, [("x", x_shape)], ["y"], inits, opset=13)
    _assert_mlp_bound(model, [x_shape[0] if isinstance(x_shape[0], int) else 1, 3, 4])


def test_weights_from_constant_nodes_and_identity_chains() -> None:
    nodes = [
        helper.make_node("Constant", [], ["W1"], value=numpy_helper.from_array(W1)),
        helper.make_node("Constant", [], ["W2c"], value=numpy_helper.from_array(W2)),
        helper.make_node("Identity", ["W2c"], ["W2"]),  # an Identity on a constant: folded
        helper.make_node("Identity", ["x"], ["x1"]),
        helper.make_node("Identity", ["x1"], ["x2"]),
        helper.make_node("Gemm", ["x2", "W1"], ["h"], transB=1),
        helper.make_node("Identity", ["h"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["t"]),
        helper.make_node("MatMul", ["t", "W2"], ["m"]),
        helper.make_node("Identity", ["m"], ["y"]),
    ]
    model = make_model(nodes, [("x", ["N", 12])], ["y"], opset=13)
    g = build_graph(model)
    assert g.tensors["W2"].value is not None and not g.tensors["W2"].variable
    assert "Constant" not in {n.op_type for n in g.nodes}
    _assert_mlp_bound(model, [1, 12])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_final_softmax_is_cut_with_warning(op: str) -> None:
    nodes, inits = _mlp_nodes(13)
    nodes[-1].output[0] = "logits"
    nodes.append(helper.make_node(op, ["logits"], ["y"], axis=-1))
    model = make_model(nodes, [("x", ["N", 3, 4])], ["y"], inits, opset=13)
    a = analyze(model)
    assert a.logits_name == "logits"
    assert any("softmax" in w.lower() for w in a.warnings)
    assert PRODUCT <= a.bound <= PRODUCT * TOL
    # The bound is for the logits: at least the logits' own Lipschitz lower estimate.
    logits_model = make_model(nodes[:-1], [("x", ["N", 3, 4])], ["logits"], inits, opset=13)
    assert max_jacobian_norm(logits_model, [1, 3, 4], n_points=2) <= a.bound * TOL


def test_cast_and_shape_arithmetic_fold_to_constants() -> None:
    # Shape -> Gather -> Unsqueeze -> Concat -> Reshape, with a Cast on a constant, as old exporters write.
    inits = {"W1": W1, "zero": np.array([0], dtype=np.int64), "minus1": np.array([-1], dtype=np.int64),
             "scale": np.array(2.0, dtype=np.float64)}
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Cast", ["scale"], ["scale32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["flat", "scale32"], ["scaled"]),
        helper.make_node("Gemm", ["scaled", "W1"], ["y"], transB=1),
    ]
    model = make_model(nodes, [("x", ["N", 3, 4])], ["y"], inits, opset=13)
    g = build_graph(model)
    assert g.tensors["target"].value is not None
    assert g.tensors["scale32"].value is not None and g.tensors["scale32"].value.dtype == np.float32
    ops = [n.op_type for n in g.nodes]
    assert "Shape" not in ops and "Gather" not in ops and "Cast" not in ops
    a = analyze(model)
    want = 2.0 * spectral(W1)
    assert want <= a.bound <= want * TOL
    assert max_jacobian_norm(model, [1, 3, 4], n_points=2) <= a.bound * TOL


def test_cycle_is_refused() -> None:
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 3])], ["y"], opset=13)
    with pytest.raises(ModelLoadError, match="cycle"):
        analyze(model)


def test_dangling_tensor_is_a_clear_error() -> None:
    nodes = [helper.make_node("MatMul", ["x", "W_missing"], ["y"])]
    model = make_model(nodes, [("x", [1, 3])], ["y"], opset=13)
    with pytest.raises(ModelLoadError, match="W_missing"):
        analyze(model)


@pytest.mark.parametrize("opset, attrs", [(7, {"spatial": 1, "epsilon": 1e-3}), (9, {"epsilon": 1e-3}),
                                          (15, {"epsilon": 1e-3})])
def test_batchnorm_of_each_era(opset: int, attrs: dict) -> None:
    if lookup("ai.onnx", "BatchNormalization", opset) is None:
        pytest.skip("BatchNormalization rule not present yet")
    c = 4
    gamma = RNG.standard_normal(c).astype(np.float32)
    inits = {"g": gamma, "b": RNG.standard_normal(c).astype(np.float32),
             "m": RNG.standard_normal(c).astype(np.float32), "v": RNG.uniform(0.5, 2, c).astype(np.float32)}
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], **attrs)]
    model = make_model(nodes, [("x", ["N", c, 3, 3])], ["y"], inits, opset=opset)
    a = analyze(model)
    want = float(np.max(np.abs(gamma.astype(np.float64)) / np.sqrt(inits["v"].astype(np.float64) + 1e-3)))
    exact = exact_norm(model, [1, c, 3, 3])
    assert exact <= a.bound * TOL
    assert a.bound <= want * (1 + 1e-5)


# ---------------------------------------------------------------------------- NHWC around Conv
def test_nhwc_input_with_transposes_around_conv() -> None:
    if lookup("ai.onnx", "Conv", 13) is None:
        pytest.skip("Conv rule not present yet")
    k = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wd = RNG.standard_normal((4 * 5 * 5, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),  # NHWC -> NCHW (tf2onnx style)
        helper.make_node("Conv", ["xc", "K"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["ch"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["ch"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "Wd"], ["y"]),
    ]
    inits = {"K": k, "Wd": wd, "shape": np.array([-1, 100], dtype=np.int64)}
    model = make_model(nodes, [("x", ["N", 5, 5, 3])], ["y"], inits, opset=13)
    a = analyze(model)
    assert max_jacobian_norm(model, [1, 5, 5, 3], n_points=2) <= a.bound * TOL


# ---------------------------------------------------------------------------- torch exporters
torch = pytest.importorskip("torch")


class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 10)
        self.fc2 = torch.nn.Linear(10, 7)
        self.fc3 = torch.nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size(0), -1)  # the legacy exporter writes Shape/Gather/Unsqueeze/Concat/Reshape
        return self.fc3(torch.nn.functional.leaky_relu(self.fc2(torch.relu(self.fc1(x))), 0.1))


def _torch_mlp_product(m: _MLP) -> float:
    return float(np.prod([spectral(layer.weight.detach().numpy()) for layer in (m.fc1, m.fc2, m.fc3)]))


def test_torch_legacy_exporter_shape_chain_is_folded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = _MLP().eval()
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, 4),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=13)
    raw_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Shape" in raw_ops  # the chain really is there
    a = analyze(path)
    data_ops = {n.op_type for n in a.graph.nodes}
    assert not data_ops & {"Shape", "Gather", "Unsqueeze", "Concat", "Constant"}
    product = _torch_mlp_product(m)
    assert product <= a.bound <= product * TOL
    model = onnx.load(str(path))
    assert max_jacobian_norm(model, [1, 3, 4], n_points=3) <= a.bound * TOL


def test_torch_dynamo_exporter_mlp(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    torch.manual_seed(1)
    m = _MLP().eval()
    path = tmp_path / "mlp_dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(m, (torch.randn(2, 3, 4),), str(path), dynamo=True, input_names=["x"],
                              output_names=["y"], dynamic_shapes={"x": {0: torch.export.Dim("N")}},
                              external_data=False, verbose=False)
        except Exception as exc:  # noqa: BLE001 - an exporter failure is not lipgraph's
            pytest.skip(f"dynamo exporter unavailable: {type(exc).__name__}")
    a = analyze(path)
    product = _torch_mlp_product(m)
    assert product <= a.bound <= product * TOL
    assert max_jacobian_norm(onnx.load(str(path)), [1, 3, 4], n_points=2) <= a.bound * TOL


def test_torch_legacy_symbolic_spatial_dims(tmp_path: Path) -> None:
    # Dynamic N, H, W: the Shape chain after global pooling still folds (its shape is known there).
    if lookup("ai.onnx", "GlobalAveragePool", 13) is None:
        pytest.skip("GlobalAveragePool rule not present yet")

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            return self.fc(p.view(p.size(0), -1))

    torch.manual_seed(2)
    m = Pooled().eval()
    path = tmp_path / "hw.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, 4, 5),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}}, opset_version=13)
    a = analyze(path)
    assert "Shape" not in {n.op_type for n in a.graph.nodes}
    w = spectral(m.fc.weight.detach().numpy())
    assert w <= a.bound * TOL  # the average over an unknown window is at most 1-Lipschitz
    assert max_jacobian_norm(onnx.load(str(path)), [1, 3, 2, 2], n_points=2) <= a.bound * TOL


def test_model_local_functions_are_inlined() -> None:
    body = [helper.make_node("MatMul", ["a", "w"], ["t"]), helper.make_node("Relu", ["t"], ["b"])]
    fn = helper.make_function("my.fn", "Block", ["a", "w"], ["b"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Block", ["x", "W1t"], ["h"], domain="my.fn"),
             helper.make_node("Block", ["h", "W2"], ["y"], domain="my.fn")]
    model = make_model(nodes, [("x", ["N", 12])], ["y"], {"W1t": W1.T.copy(), "W2": W2}, opset=17,
                       extra_opsets={"my.fn": 1})
    model.functions.append(fn)
    a = analyze(model)
    assert PRODUCT <= a.bound <= PRODUCT * TOL
    # inlined: only the body's ops remain (the hidden MatMul -> Relu -> MatMul may be fused into a Sandwich)
    assert "Block" not in {n.op_type for n in a.graph.nodes}
    assert {n.op_type for n in a.graph.nodes} <= {"MatMul", "Relu", "Sandwich"}
    assert {n.domain for n in a.graph.nodes} <= {"ai.onnx", "lipgraph"}
    assert max_jacobian_norm(model, [1, 12], n_points=2) <= a.bound * TOL
