"""Random layers over every op lipgraph accepts, for the adversarial generator.

Each layer draws its attributes and constants from a numpy generator and appends nodes to a
:class:`Builder`; it returns the new variable tensor, or None where it does not apply to the current
shape or opset. Constants are drawn to broadcast against the data in every legal way (a constant
larger than the data included), attributes over every mode, and opset-dependent forms (attribute vs
input) follow the model's opset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

Shape = tuple[int, ...]


class Builder:
    """Nodes and constants of one model under construction."""

    def __init__(self, rng: np.random.Generator, opset: int) -> None:
        self.rng = rng
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.desc: list[str] = []
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, arr: np.ndarray) -> str:
        name = self.fresh("c")
        self.inits[name] = np.asarray(arr)
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs: object) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh("n_" + op), **attrs))
        self.desc.append(f"{op}{_short(attrs)}")
        return outs

    def f32(self, shape: Shape, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)


def _short(attrs: dict) -> str:
    return "(" + ",".join(f"{k}={v}" for k, v in attrs.items()) + ")" if attrs else ""


def broadcast_shape(rng: np.random.Generator, shape: Shape, grow: bool = True) -> Shape:
    """A shape that broadcasts with ``shape``: per axis the same size, 1, or (where the data has 1) more;
    sometimes with extra leading axes (which copy the data)."""
    out = []
    for d in shape:
        r = rng.random()
        if d == 1 and grow and r < 0.35:
            out.append(int(rng.integers(2, 4)))
        elif r < 0.5:
            out.append(1)
        else:
            out.append(d)
    if rng.random() < 0.5:
        drop = int(rng.integers(0, len(out) + 1))
        out = out[drop:]
    if grow and rng.random() < 0.25:
        out = [int(rng.integers(1, 4))] + out
    return tuple(out)


# ---------------------------------------------------------------------- elementwise
_UNARY: list[tuple[str, int, Callable[[np.random.Generator], dict]]] = [
    ("Relu", 1, lambda r: {}),
    ("Abs", 1, lambda r: {}),
    ("Neg", 1, lambda r: {}),
    ("Tanh", 1, lambda r: {}),
    ("Softplus", 1, lambda r: {}),
    ("Softsign", 1, lambda r: {}),
    ("Sin", 7, lambda r: {}),
    ("Cos", 7, lambda r: {}),
    ("Atan", 7, lambda r: {}),
    ("Asinh", 9, lambda r: {}),
    ("Sigmoid", 1, lambda r: {}),
    ("Erf", 9, lambda r: {}),
    ("LeakyRelu", 1, lambda r: {"alpha": float(r.choice([0.01, -0.5, 2.5]))}),
    ("Elu", 1, lambda r: {"alpha": float(r.choice([1.0, 0.3, 2.0]))}),
    ("Selu", 1, lambda r: {"alpha": float(r.choice([1.6733, 0.5])), "gamma": float(r.choice([1.0507, 2.0]))}),
    ("Celu", 12, lambda r: {"alpha": float(r.choice([1.0, 0.4, 3.0]))}),
    ("HardSigmoid", 1, lambda r: {"alpha": float(r.choice([0.2, 1.5, -2.0])), "beta": float(r.choice([0.5, 0.0]))}),
    ("HardSwish", 14, lambda r: {}),
    ("Mish", 18, lambda r: {}),
    ("Gelu", 20, lambda r: {"approximate": str(r.choice(["none", "tanh"]))}),
]


def unary(b: Builder, x: str, shape: Shape) -> str | None:
    ok = [u for u in _UNARY if u[1] <= b.opset]
    op, _, attrs = ok[int(b.rng.integers(len(ok)))]
    return b.node(op, [x], **attrs(b.rng))[0]


def softmax(b: Builder, x: str, shape: Shape) -> str | None:
    if b.opset < 13:
        return None
    return b.node("Softmax", [x], axis=int(b.rng.integers(-len(shape), len(shape))))[0]


def clip(b: Builder, x: str, shape: Shape) -> str | None:
    lo, hi = sorted(b.rng.standard_normal(2).tolist())
    if b.opset < 11:
        return b.node("Clip", [x], min=lo, max=hi)[0]
    ins = [x, b.const(np.array(lo, np.float32)) if b.rng.random() < 0.8 else "", b.const(np.array(hi, np.float32))]
    return b.node("Clip", ins)[0]


def binary_const(b: Builder, x: str, shape: Shape) -> str | None:
    """A broadcasting op with one constant operand of a random broadcast shape, on either side."""
    op = str(b.rng.choice(["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu", "Sum", "Mean"]))
    cshape = broadcast_shape(b.rng, shape)
    if op == "Pow":
        c = np.ones(cshape, np.float32)
    elif op == "Div":
        c = (np.sign(b.f32(cshape)) * (0.5 + np.abs(b.f32(cshape)))).astype(np.float32)
    else:
        c = b.f32(cshape)
    cn = b.const(c)
    if op in ("Pow", "PRelu", "Div") or b.rng.random() < 0.5:
        return b.node(op, [x, cn])[0]
    return b.node(op, [cn, x])[0]


def _slice_to_one(b: Builder, x: str, shape: Shape) -> str:
    axis = int(b.rng.integers(len(shape)))
    return b.node("Slice", [x, b.const(np.array([0])), b.const(np.array([1])), b.const(np.array([axis]))])[0]


def join(b: Builder, x: str, shape: Shape) -> str | None:
    """A join of x with a transform of x: itself, an activation, or a length-1 slice (broadcast back)."""
    op = str(b.rng.choice(["Add", "Sub", "Max", "Min", "Sum", "Mean", "Concat"]))
    r = b.rng.random()
    if r < 0.4 and b.opset >= 10:
        other = _slice_to_one(b, x, shape)
        if op == "Concat":
            op = "Add"
    elif r < 0.7:
        other = b.node("Relu", [x])[0]
    else:
        other = x
    ins = [x, other] if b.rng.random() < 0.5 else [other, x]
    if op == "Concat":
        return b.node("Concat", ins, axis=int(b.rng.integers(len(shape))))[0]
    return b.node(op, ins)[0]


# ---------------------------------------------------------------------- structure
def structural(b: Builder, x: str, shape: Shape) -> str | None:
    r = int(b.rng.integers(10))
    if r == 9 and b.opset >= 10:
        # a length-1 slice expanded back to the data's shape through shape arithmetic (Shape -> Expand)
        return b.node("Expand", [_slice_to_one(b, x, shape), b.node("Shape", [x])[0]])[0]
    rank = len(shape)
    if r == 0:
        return b.node("Reshape", [x, b.const(np.array([1, -1], np.int64))])[0]
    if r == 1:
        return b.node("Transpose", [x], perm=[int(p) for p in b.rng.permutation(rank)])[0]
    if r == 2:
        return b.node("Flatten", [x], axis=int(b.rng.integers(0, rank + 1)))[0]
    if r == 3 and b.opset >= 13:
        return b.node("Unsqueeze", [x, b.const(np.array([int(b.rng.integers(0, rank + 1))], np.int64))])[0]
    if r == 4 and b.opset >= 10:
        ax = int(b.rng.integers(rank))
        n = shape[ax]
        step = int(b.rng.choice([1, 2, -1, -2]))
        st, en = (0, n) if step > 0 else (n - 1, -n - 1)
        st += int(b.rng.integers(0, 2)) * (1 if step > 0 else -1) if n > 2 else 0
        ins = [x, b.const(np.array([st])), b.const(np.array([en])), b.const(np.array([ax])), b.const(np.array([step]))]
        return b.node("Slice", ins)[0]
    if r == 5:
        ax = int(b.rng.integers(rank))
        idx = b.rng.integers(-shape[ax], shape[ax], size=int(b.rng.integers(1, shape[ax] + 3)))
        return b.node("Gather", [x, b.const(idx.astype(np.int64))], axis=ax)[0]
    if r == 6 and b.opset >= 6:
        reps = b.rng.integers(1, 3, size=rank).astype(np.int64)
        return b.node("Tile", [x, b.const(reps)])[0]
    if r == 7 and b.opset >= 8:
        return b.node("Expand", [x, b.const(np.array(broadcast_shape(b.rng, shape), np.int64))])[0]
    if r == 8 and b.opset >= 13:
        ax = int(b.rng.integers(rank))
        if shape[ax] < 2:
            return None
        parts = b.node("Split", [x, b.const(np.array([1, shape[ax] - 1], np.int64))], n_out=2, axis=ax)
        return parts[int(b.rng.integers(2))]
    return None


def misc(b: Builder, x: str, shape: Shape) -> str | None:
    r = int(b.rng.integers(6))
    if r == 0:
        return b.node("Identity", [x])[0]
    if r == 1:
        return b.node("Dropout", [x])[0]
    if r == 2:
        mid = b.node("Cast", [x], to=TensorProto.DOUBLE)[0]
        return b.node("Cast", [mid], to=TensorProto.FLOAT)[0]
    if r == 3 and b.opset >= 11:
        ax = int(b.rng.integers(len(shape)))
        k = int(b.rng.integers(1, shape[ax] + 1))
        return b.node("TopK", [x, b.const(np.array([k], np.int64))], n_out=2, axis=ax)[0]
    if r == 4 and len(shape) == 4 and shape[2] % 2 == 0 and shape[3] % 2 == 0:
        return b.node("SpaceToDepth", [x], blocksize=2)[0]
    if r == 5 and len(shape) == 4 and shape[1] % 4 == 0:
        return b.node("DepthToSpace", [x], blocksize=2, mode=str(b.rng.choice(["DCR", "CRD"])))[0]
    return None


def pad(b: Builder, x: str, shape: Shape) -> str | None:
    modes = ["constant", "reflect", "edge"] + (["wrap"] if b.opset >= 19 else [])
    mode = str(b.rng.choice(modes))
    rank = len(shape)
    pads = [int(b.rng.integers(-1 if mode == "constant" else 0, 3)) for _ in range(2 * rank)]
    if mode == "reflect":
        pads = [min(p, shape[i % rank] - 1) for i, p in enumerate(pads)]
    if b.opset < 11:
        return b.node("Pad", [x], mode=mode, pads=pads)[0]
    return b.node("Pad", [x, b.const(np.array(pads, np.int64))], mode=mode)[0]


# ---------------------------------------------------------------------- linear and pooling
def dense(b: Builder, x: str, shape: Shape) -> str | None:
    n = shape[-1]
    m = int(b.rng.integers(1, 6))
    if len(shape) == 2 and b.rng.random() < 0.5:
        ta = 0
        tb = int(b.rng.integers(2))
        w = b.f32((m, n) if tb else (n, m))
        cshape = broadcast_shape(b.rng, (shape[0], m), grow=False)
        ins = [x, b.const(w), b.const(b.f32(cshape))]
        return b.node("Gemm", ins, transA=ta, transB=tb, alpha=float(b.rng.choice([1.0, -0.5, 2.0])))[0]
    wshape = (n, m) if b.rng.random() < 0.7 else (int(b.rng.integers(1, 3)), n, m)
    return b.node("MatMul", [x, b.const(b.f32(wshape))])[0]


def conv(b: Builder, x: str, shape: Shape) -> str | None:
    if len(shape) not in (3, 4):
        return None
    sp = shape[2:]
    c = shape[1]
    group = int(b.rng.choice([g for g in (1, 2, c) if c % g == 0]))
    k = [int(b.rng.integers(1, min(3, s) + 1)) for s in sp]
    cout = group * int(b.rng.integers(1, 3))
    attrs: dict = {"kernel_shape": k, "group": group}
    if b.rng.random() < 0.5:
        attrs["strides"] = [int(b.rng.integers(1, 3)) for _ in sp]
    if b.rng.random() < 0.4:
        attrs["pads"] = [int(b.rng.integers(0, 2)) for _ in range(2 * len(sp))]
    elif b.rng.random() < 0.3:
        attrs["auto_pad"] = str(b.rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    if b.rng.random() < 0.3 and all(s >= 3 for s in sp):
        attrs["dilations"] = [2 for _ in sp]
    if b.rng.random() < 0.25:
        w = b.f32((c, cout // group, *k))
        return b.node("ConvTranspose", [x, b.const(w)], **attrs)[0]
    w = b.f32((cout, c // group, *k))
    return b.node("Conv", [x, b.const(w), b.const(b.f32((cout,)))], **attrs)[0]


def norm(b: Builder, x: str, shape: Shape) -> str | None:
    if len(shape) < 2:
        return None
    c = shape[1]
    ins = [x, b.const(b.f32((c,))), b.const(b.f32((c,))), b.const(b.f32((c,))), b.const(np.abs(b.f32((c,))) + 0.1)]
    return b.node("BatchNormalization", ins, epsilon=1e-5)[0]


def pool(b: Builder, x: str, shape: Shape) -> str | None:
    if len(shape) not in (3, 4):
        return None
    sp = shape[2:]
    op = str(b.rng.choice(["AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"]))
    if op.startswith("Global"):
        return b.node(op, [x], **({"p": int(b.rng.choice([1, 2, 3]))} if op == "GlobalLpPool" else {}))[0]
    k = [int(b.rng.integers(1, s + 1)) for s in sp]
    attrs: dict = {"kernel_shape": k, "strides": [int(b.rng.integers(1, 3)) for _ in sp]}
    if b.rng.random() < 0.4:
        attrs["pads"] = [int(b.rng.integers(0, min(kk, 2))) for kk in k for _ in (0,)] * 2
    if op == "AveragePool":
        attrs["count_include_pad"] = int(b.rng.integers(2))
        if b.opset >= 10:
            attrs["ceil_mode"] = int(b.rng.integers(2))
    if op == "LpPool":
        attrs["p"] = int(b.rng.choice([1, 2, 3]))
    if op == "MaxPool" and b.opset >= 10 and b.rng.random() < 0.3:
        attrs["ceil_mode"] = 1
    return b.node(op, [x], **attrs)[0]


def reduce(b: Builder, x: str, shape: Shape) -> str | None:
    op = str(
        b.rng.choice(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceLogSumExp"])
    )
    axes = sorted({int(a) for a in b.rng.integers(0, len(shape), size=int(b.rng.integers(1, 3)))})
    keep = int(b.rng.integers(2))
    if (op == "ReduceSum" and b.opset >= 13) or b.opset >= 18:
        return b.node(op, [x, b.const(np.array(axes, np.int64))], keepdims=keep)[0]
    return b.node(op, [x], axes=axes, keepdims=keep)[0]


def resize(b: Builder, x: str, shape: Shape) -> str | None:
    if len(shape) != 4 or b.opset < 11:
        return None
    mode = str(b.rng.choice(["nearest", "linear"]))
    scales = np.array([1, 1, *(float(b.rng.choice([2.0, 0.5, 1.5])) for _ in shape[2:])], np.float32)
    if any(s * d < 1 for s, d in zip(scales, shape, strict=True)):
        return None
    ctm = "asymmetric" if mode == "nearest" else str(b.rng.choice(["half_pixel", "align_corners", "asymmetric"]))
    return b.node("Resize", [x, "", b.const(scales)], mode=mode, coordinate_transformation_mode=ctm)[0]


def squeeze_like(b: Builder, x: str, shape: Shape) -> str | None:
    """Squeeze / Unsqueeze in both opset forms (axes attribute before 13, input from 13)."""
    ones = [i for i, d in enumerate(shape) if d == 1 and i > 0]
    if ones and b.rng.random() < 0.5:
        axes = [int(b.rng.choice(ones))]
        if b.opset >= 13:
            return b.node("Squeeze", [x, b.const(np.array(axes, np.int64))])[0]
        return b.node("Squeeze", [x], axes=axes)[0]
    axes = [int(b.rng.integers(1, len(shape) + 1))]
    if b.opset >= 13:
        return b.node("Unsqueeze", [x, b.const(np.array(axes, np.int64))])[0]
    return b.node("Unsqueeze", [x], axes=axes)[0]


def other_norms(b: Builder, x: str, shape: Shape) -> str | None:
    r = int(b.rng.integers(3))
    if r == 0 and b.opset >= 17:
        axis = int(b.rng.integers(-len(shape), len(shape)))
        nshape = shape[axis:] if axis >= 0 else shape[len(shape) + axis :]
        ins = [x, b.const(b.f32(nshape)), b.const(b.f32(nshape))]
        return b.node("LayerNormalization", ins, axis=axis, epsilon=float(b.rng.choice([1e-5, 0.1])))[0]
    if r == 1 and len(shape) >= 3:
        c = shape[1]
        return b.node("InstanceNormalization", [x, b.const(b.f32((c,))), b.const(b.f32((c,)))], epsilon=0.05)[0]
    if r == 2 and b.opset >= 15:
        return b.node("CastLike", [x, b.const(np.zeros((), np.float32))])[0]
    return None


def upsample(b: Builder, x: str, shape: Shape) -> str | None:
    if b.opset != 9 or len(shape) != 4:
        return None
    scales = np.array([1, 1, *(float(b.rng.choice([1.0, 2.0, 3.0])) for _ in shape[2:])], np.float32)
    mode = str(b.rng.choice(["nearest", "linear"]))
    return b.node("Upsample", [x, b.const(scales)], mode=mode)[0]


LAYERS: list[Callable[[Builder, str, Shape], str | None]] = [
    unary,
    unary,
    softmax,
    clip,
    binary_const,
    binary_const,
    binary_const,
    join,
    join,
    structural,
    structural,
    misc,
    pad,
    pad,
    dense,
    conv,
    norm,
    pool,
    reduce,
    resize,
]
