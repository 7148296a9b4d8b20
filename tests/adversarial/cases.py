"""Hand-built models for each class of soundness hole found by an adversarial corpus (issue 15).

Each builder returns ``(model, x_shape)``: a small float32 model whose true Lipschitz constant the
tests compute from ONNX Runtime's outputs (the exact dense matrix for the linear ones).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.helpers.onnx_oracle import make_model

F = TensorProto.FLOAT


# ---------------------------------------------------------------- class 1: a constant broadcasts x up
def pow_broadcast() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """``Pow(x[1,4], ones(3,1,4))``: x copied three times (true sqrt(3))."""
    node = helper.make_node("Pow", ["x", "p"], ["y"])
    return make_model([node], [("x", [1, 4])], ["y"], {"p": np.ones((3, 1, 4), np.float32)}), (1, 4)


def prelu_broadcast(slope_shape: tuple[int, ...] = (3, 1, 1)) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """``PRelu(x[1,1,2,2], slope)``: ONNX Runtime broadcasts the slope both ways."""
    slope = np.linspace(-0.5, 0.5, int(np.prod(slope_shape))).reshape(slope_shape).astype(np.float32)
    node = helper.make_node("PRelu", ["x", "s"], ["y"])
    return make_model([node], [("x", [1, 1, 2, 2])], ["y"], {"s": slope}), (1, 1, 2, 2)


# ---------------------------------------------------------------- class 2: L2 pooling, broadcasting "scalar"
def l2_pool_chain(
    c: np.ndarray, exponent: np.ndarray | None = None, root: np.ndarray | None = None
) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """``Pow(x, e) -> AveragePool(2x2, stride 2) -> Mul(c) -> Pow(root)`` on x of shape (1, 1, 4, 4)."""
    e = np.array(2.0, np.float32) if exponent is None else exponent
    r = np.array(0.5, np.float32) if root is None else root
    nodes = [
        helper.make_node("Pow", ["x", "e"], ["sq"]),
        helper.make_node("AveragePool", ["sq"], ["avg"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mul", ["avg", "c"], ["sc"]),
        helper.make_node("Pow", ["sc", "r"], ["y"]),
    ]
    return make_model(nodes, [("x", [1, 1, 4, 4])], ["y"], {"e": e, "c": c.astype(np.float32), "r": r}), (1, 1, 4, 4)


# ---------------------------------------------------------------- class 3: declarations that lie
def conv_on_fake_grid(lie: str = "output") -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """Relu -> Conv 3x3 (pad 1) on an 8x8 grid; the Relu output re-declared as 2x2 (an extra output,
    or ``value_info`` when ``lie == "value_info"``, or nothing when ``lie == "none"``)."""
    w = np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    outs: list = ["y"]
    if lie == "output":
        outs.append(("r", [1, 1, 2, 2]))
    m = make_model(nodes, [("x", [1, 1, 8, 8])], outs, {"w": w})
    if lie == "value_info":
        m.graph.value_info.append(helper.make_tensor_value_info("r", F, [1, 1, 2, 2]))
    return m, (1, 1, 8, 8)


def expand_declared_unbroadcast(lie: bool = True) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """``Expand(x[1,4], [3,4])`` (three copies) whose output is re-declared as [1, 4], then a MatMul."""
    w = np.eye(4, dtype=np.float32)
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["e"]),
        helper.make_node("MatMul", ["e", "w"], ["y"]),
    ]
    outs: list = ["y"] + ([("e", [1, 4])] if lie else [])
    return make_model(nodes, [("x", [1, 4])], outs, {"shape": np.array([3, 4], np.int64), "w": w}), (1, 4)


def topk_indices_as_float(declare: bool = True) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """TopK's integer indices, declared FLOAT as an extra output, cast to float and added to the values."""
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["vals", "idx"], axis=-1),
        helper.make_node("Cast", ["idx"], ["idxf"], to=F),
        helper.make_node("Add", ["vals", "idxf"], ["y"]),
    ]
    m = make_model(nodes, [("x", [1, 6])], ["y"], {"k": np.array([3], np.int64)})
    if declare:
        m.graph.output.append(helper.make_tensor_value_info("idx", F, [1, 3]))
    return m, (1, 6)


# ---------------------------------------------------------------- class 5: Pad attribute form
def pad_attribute(opset: int, mode: str, pads: list[int]) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """Pad at opset < 11: the amounts are the attribute ``pads`` (``paddings`` at opset 1)."""
    key = "paddings" if opset == 1 else "pads"
    node = helper.make_node("Pad", ["x"], ["y"], mode=mode, **{key: pads})
    return make_model([node], [("x", [1, 1, 3, 3])], ["y"], opset=opset, ir_version=3 if opset < 8 else None), (
        1,
        1,
        3,
        3,
    )


# ---------------------------------------------------------------- class 6: symbolic sizes
def add_first_row(h: str | int = "H", w: str | int = "W") -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """``x + x[:, :, :1]`` on x of shape (1, 1, H, W): the slice is broadcast along H."""
    nodes = [
        helper.make_node("Slice", ["x", "st", "en", "ax"], ["s"]),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    inits = {"st": np.array([0], np.int64), "en": np.array([1], np.int64), "ax": np.array([2], np.int64)}
    return make_model(nodes, [("x", [1, 1, h, w])], ["y"], inits), (1, 1, 8, 8)


# ---------------------------------------------------------------- class 8: unsorted nodes
def shuffled(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` with its nodes in a random (non-topological) order."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    order = np.random.default_rng(seed).permutation(len(nodes))
    if len(nodes) > 1 and all(order[i] < order[i + 1] for i in range(len(order) - 1)):
        order = order[::-1]
    copies = []
    for k in order:
        c = onnx.NodeProto()
        c.CopyFrom(nodes[int(k)])
        copies.append(c)
    del m.graph.node[:]
    m.graph.node.extend(copies)
    return m
