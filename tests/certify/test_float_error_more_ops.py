"""Float-error handlers beyond the basic classes, against a float64 oracle.

Each model is ``x -> op -> (Reshape) -> Gemm``; ONNX Runtime's float32 logits are compared with the same
model evaluated in float64 by onnx's reference evaluator, on random inputs at several scales, including
adversarial ones (values near a threshold, huge offsets, underflowing squares): the observed error must
stay within the bound on every sample.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.floaterr import float_error_model
from tests.certify.float_nets import as_float64


def run_float64(m: onnx.ModelProto, x: np.ndarray, out: int = 0) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    return np.asarray(ReferenceEvaluator(as_float64(m)).run(None, {"x": x.astype(np.float64)})[out], np.float64)


def _model(
    nodes: list, shape: list[int], mid: str, mid_size: int, inits: dict, opset: int = 18, k: int = 5
) -> onnx.ModelProto:
    """The op, then a Gemm to ``k`` logits ``y``; the op's own output ``mid`` is a second graph output."""
    rng = np.random.default_rng(7)
    nodes = [
        *nodes,
        helper.make_node("Reshape", [mid, "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_out"], ["y"]),
    ]
    all_inits = {
        **inits,
        "flat_shape": np.array([1, mid_size], np.int64),
        "w_out": rng.normal(size=(mid_size, k)).astype(np.float32),
    }
    g = helper.make_graph(
        nodes,
        "op_then_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k]), helper.make_empty_tensor_value_info(mid)],
        [numpy_helper.from_array(v, n) for n, v in all_inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10 if opset >= 21 else 8
    return m


def _check(
    m: onnx.ModelProto, shape: list[int], inputs: list[np.ndarray], oracle=run_float64, at_op: bool = False
) -> float:
    """Largest observed error / bound over the samples (must be <= 1). ``at_op``: compare the op's own
    output (the second graph output) with its bound, where the Gemm's larger rounding would hide it."""
    out = 1 if at_op else 0
    em = float_error_model(m, None, tuple(shape), tensor=m.graph.output[out].name)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        x = x.astype(np.float32).reshape(shape)
        got = sess.run(None, {"x": x})[out].astype(np.float64)
        err = float(np.linalg.norm(got - oracle(m, x, out)))
        bound = float(em.at(np.array([np.linalg.norm(x.astype(np.float64))]))[0])
        assert math.isfinite(bound)
        assert err <= bound, (err, bound)
        worst = max(worst, err / bound)
    return worst


def _inputs(shape: list[int], seed: int, scales=(1e-3, 1.0, 1e3), offsets=(0.0, 1e3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) * s + o for s in scales for o in offsets for _ in range(3)]


def test_where_with_a_constant_mask_and_a_large_constant_branch() -> None:
    shape = [1, 12]
    rng = np.random.default_rng(1)
    mask = rng.random((1, 12)) < 0.5
    m = _model(
        [helper.make_node("Where", ["mask", "x", "other"], ["h"])],
        shape,
        "h",
        12,
        {"mask": mask, "other": np.full((1, 12), 2.0**12, np.float32)},
    )
    _check(m, shape, _inputs(shape, 2))


def test_gather_nd_with_repeated_indices() -> None:
    shape = [4, 3]
    m = _model(
        [helper.make_node("GatherND", ["x", "idx"], ["h"])],
        shape,
        "h",
        15,
        {"idx": np.array([[0], [2], [2], [3], [0]], np.int64)},
    )
    _check(m, shape, _inputs(shape, 3))


def test_shrink_near_its_threshold() -> None:
    shape = [1, 16]
    m = _model([helper.make_node("Shrink", ["x"], ["h"], lambd=0.3, bias=0.3)], shape, "h", 16, {})
    rng = np.random.default_rng(4)
    near = [0.3 + rng.normal(size=shape) * 1e-6 * rng.choice([-1, 1], size=shape) for _ in range(4)]
    for at_op in (False, True):
        _check(m, shape, _inputs(shape, 4) + near, at_op=at_op)


def test_cos_and_pow_one() -> None:
    shape = [1, 10]
    m = _model(
        [helper.make_node("Pow", ["x", "one"], ["p"]), helper.make_node("Cos", ["p"], ["h"])],
        shape,
        "h",
        10,
        {"one": np.ones((1, 10), np.float32)},
    )
    _check(m, shape, _inputs(shape, 5))


@pytest.mark.parametrize("opset,axis", [(18, -1), (18, 1), (11, 1)])
def test_softmax_inside_the_network(opset: int, axis: int) -> None:
    shape = [1, 3, 8]
    m = _model([helper.make_node("Softmax", ["x"], ["h"], axis=axis)], shape, "h", 24, {}, opset=opset)
    rng = np.random.default_rng(6)
    spread = [rng.normal(size=shape) * 30.0 + 5e3 for _ in range(4)]  # huge offset: x - max loses low bits
    oracle = run_float64 if opset >= 13 else _flattened_softmax_then_gemm
    for at_op in (False, True):
        _check(m, shape, _inputs(shape, 6, scales=(1e-3, 1.0, 10.0, 1e3)) + spread, oracle, at_op)


def _flattened_softmax_then_gemm(m: onnx.ModelProto, x: np.ndarray, out: int = 0) -> np.ndarray:
    """Opset < 13 Softmax normalises over all axes from ``axis`` on (onnx's reference evaluator applies
    the opset-13 definition to every opset, so the float64 oracle is written out here)."""
    w = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w_out")).astype(np.float64)
    z = x.astype(np.float64).reshape(1, -1)
    e = np.exp(z - z.max())
    return (e / e.sum()).reshape(x.shape) if out else (e / e.sum()) @ w


@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool_and_global_lp_pool(p: int) -> None:
    shape = [1, 2, 6, 6]
    m = _model(
        [
            helper.make_node("LpPool", ["x"], ["a"], kernel_shape=[3, 3], strides=[2, 2], p=p),
            helper.make_node("GlobalLpPool", ["a"], ["h"], p=p),
        ],
        shape,
        "h",
        2,
        {},
    )
    tiny = [np.random.default_rng(8).normal(size=shape) * 1e-22 for _ in range(3)]  # powers underflow

    def oracle(model: onnx.ModelProto, x: np.ndarray, out: int = 0) -> np.ndarray:  # onnx's reference has no LpPool
        w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w_out")).astype(np.float64)
        a = np.abs(x.astype(np.float64)) ** p
        win = np.array([[a[0, c, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].sum() for i in range(2) for j in range(2)]
                        for c in range(2)]) ** (1.0 / p)  # fmt: skip
        return ((np.abs(win) ** p).sum(axis=1) ** (1.0 / p)).reshape(1, 2) @ w

    _check(m, shape, _inputs(shape, 8) + tiny, oracle)


def test_reduce_l2_and_reduce_l1() -> None:
    shape = [1, 4, 6]
    m = _model(
        [
            helper.make_node("ReduceL2", ["x", "ax"], ["a"], keepdims=1),
            helper.make_node("ReduceL1", ["x", "ax"], ["b"], keepdims=1),
            helper.make_node("Concat", ["a", "b"], ["h"], axis=2),
        ],
        shape,
        "h",
        8,
        {"ax": np.array([2], np.int64)},
    )
    tiny = [np.random.default_rng(9).normal(size=shape) * 1e-21 for _ in range(3)]
    _check(m, shape, _inputs(shape, 9) + tiny)


def test_topk_values() -> None:
    shape = [1, 10]
    m = _model(
        [helper.make_node("TopK", ["x", "k"], ["h", "idx"], axis=-1)], shape, "h", 4, {"k": np.array([4], np.int64)}
    )
    _check(m, shape, _inputs(shape, 10))


def _pool_chain(p: float, c: float | None, root: str = "Pow") -> tuple[onnx.ModelProto, list[int]]:
    """``Pow(x, p) -> AveragePool -> [Mul(c)] -> Pow(1/p)`` as torch's LPPool writes it (the pass fuses it)."""
    shape = [1, 2, 6, 6]
    nodes = [
        helper.make_node("Pow", ["x", "p"], ["s"]),
        helper.make_node("AveragePool", ["s"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits: dict = {"p": np.array(p, np.float32)}
    last = "a"
    if c is not None:
        nodes.append(helper.make_node("Mul", ["a", "c"], ["ac"]))
        inits["c"] = np.array(c, np.float32)
        last = "ac"
    if root == "Sqrt":
        nodes.append(helper.make_node("Sqrt", [last], ["h"]))
    else:
        nodes.append(helper.make_node("Pow", [last, "q"], ["h"]))
        inits["q"] = np.array(1.0 / p, np.float32)
    return _model(nodes, shape, "h", 18, inits), shape


@pytest.mark.parametrize("p,c,root", [(2, 4.0, "Pow"), (2, None, "Sqrt"), (2, 0.25, "Pow"), (4, 4.0, "Pow")])
def test_power_mean_pool_chains(p: float, c: float | None, root: str) -> None:
    m, shape = _pool_chain(p, c, root)
    tiny = [np.random.default_rng(11).normal(size=shape) * 1e-21 for _ in range(3)]
    _check(m, shape, _inputs(shape, 11, offsets=(0.0, 30.0)) + tiny)


@pytest.mark.parametrize("dynamo", [False, True])
def test_torch_lppool_and_softmax_export(tmp_path, dynamo: bool) -> None:
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
            self.pool = torch.nn.LPPool2d(2, 2)
            self.fc = torch.nn.Linear(48, 4)

        def forward(self, x):  # noqa: ANN001, ANN202
            h = torch.softmax(self.conv(x), dim=1)
            return self.fc(self.pool(h).flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=dynamo, input_names=["x"])
    m = onnx.load(str(path))
    shape = [1, 1, 8, 8]
    _check(m, shape, _inputs(shape, 12, scales=(1e-2, 1.0, 1e2), offsets=(0.0, 10.0)))


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_rms_normalization(eps: float) -> None:
    shape = [1, 3, 8]
    scale = np.random.default_rng(13).normal(size=8).astype(np.float32) * 3.0
    m = _model(
        [helper.make_node("RMSNormalization", ["x", "scale"], ["h"], axis=-1, epsilon=eps)],
        shape,
        "h",
        24,
        {"scale": scale},
        opset=23,
    )
    rng = np.random.default_rng(13)
    near_eps = [rng.normal(size=shape) * math.sqrt(eps) * f for f in (0.1, 1.0, 3.0)]  # ms around eps
    for at_op in (False, True):
        _check(m, shape, _inputs(shape, 13, scales=(1e-4, 1.0, 1e3)) + near_eps, at_op=at_op)


@pytest.mark.parametrize("x_shape,w_shape", [([3, 2, 4], [3, 4, 5]), ([2, 4], [3, 4, 5]), ([1, 2, 4], [2, 3, 4, 5])])
def test_matmul_with_a_batched_constant_weight(x_shape: list[int], w_shape: list[int]) -> None:
    w = np.random.default_rng(14).normal(size=w_shape).astype(np.float32)
    out = np.broadcast_shapes(tuple(x_shape[:-2]), tuple(w_shape[:-2])) + (x_shape[-2], w_shape[-1])
    m = _model([helper.make_node("MatMul", ["x", "w"], ["h"])], x_shape, "h", int(np.prod(out)), {"w": w})
    big = [np.random.default_rng(15).normal(size=x_shape) * 1e3 + 1e4 for _ in range(3)]
    for at_op in (False, True):
        _check(m, x_shape, _inputs(x_shape, 14) + big, at_op=at_op)


def test_reduce_log_sum_exp() -> None:
    shape = [1, 3, 8]
    m = _model(
        [helper.make_node("ReduceLogSumExp", ["x", "ax"], ["h"], keepdims=1)],
        shape,
        "h",
        3,
        {"ax": np.array([2], np.int64)},
    )
    rng = np.random.default_rng(16)
    spread = [rng.normal(size=shape) * 30.0 - 5e3 for _ in range(3)]
    for at_op in (False, True):
        _check(m, shape, _inputs(shape, 16, scales=(1e-3, 1.0, 10.0, 1e3)) + spread, at_op=at_op)


@pytest.mark.parametrize("case", ["c_only", "b_and_c", "a_and_c_transposed"])
def test_gemm_with_a_variable_c(case: str) -> None:
    rng = np.random.default_rng(17)
    if case == "c_only":  # y = A B + beta x, with A B large (the constant swamps x's low bits)
        shape, inputs, attrs = [2, 3], ["A", "B", "x"], dict(beta=-2.0)
        inits = {
            "A": (rng.normal(size=(2, 4)) * 300).astype(np.float32),
            "B": rng.normal(size=(4, 3)).astype(np.float32),
        }
        out = 6
    elif case == "b_and_c":  # y = alpha A x + beta broadcast(x)
        shape, inputs, attrs = [1, 4], ["A", "x", "x"], dict(alpha=0.8, beta=0.5)
        inits = {"A": rng.normal(size=(3, 1)).astype(np.float32)}
        out = 12
    else:  # y = alpha x^T B^T + beta x: A and C are the same variable tensor
        shape, inputs, attrs = [3, 3], ["x", "B", "x"], dict(alpha=1.5, transA=1, transB=1, beta=-1.0)
        inits = {"B": (rng.normal(size=(3, 3)) * 50).astype(np.float32)}
        out = 9
    m = _model([helper.make_node("Gemm", inputs, ["h"], **attrs)], shape, "h", out, inits)
    for at_op in (False, True):
        _check(m, shape, _inputs(shape, 17), at_op=at_op)
