"""Random small DAGs of supported ops (hypothesis strategy) and a float64 Jacobian lower estimate.

The strategy draws the *structure* (ops, attributes, shapes, branches) from hypothesis, so failures
shrink to a small graph, and one integer seed for all weights (numpy), so drawing stays cheap.
Every layer is checked by running the partial model once: an attribute combination that ONNX
rejects or that empties a tensor is replaced by a safe layer, so no example is wasted.

The oracle (:func:`lower_estimate`) runs the model with onnx's reference evaluator in float64 and
returns secant ratios ``||f(a) - f(b)|| / ||a - b||`` -- each one is at most the true Lipschitz
constant (real arithmetic, up to float64 rounding) -- taken along the top right singular vector of
a finite-difference Jacobian at random points (that direction makes the ratio close to the local
norm ``||J(x)||_2``), at two step sizes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

DOUBLE = TensorProto.DOUBLE
OPSET = 17

# (op, attrs-drawer) for elementwise activations lipgraph supports with a finite constant.
ACTIVATIONS = ["Relu", "LeakyRelu", "Tanh", "Sigmoid", "Elu", "Softplus", "Selu", "Softsign", "Abs", "Neg",
               "HardSigmoid", "Clip"]


@dataclass
class Net:
    """A drawn model: float64 ONNX, its input shape (batch 1) and a readable description."""

    model: onnx.ModelProto
    x_shape: tuple[int, ...]
    layers: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Net(x_shape={self.x_shape}, layers={self.layers})"


def _run(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: tuple[int, ...],
         out: str, batch: Any = "N", out_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "dag",
        [helper.make_tensor_value_info("x", DOUBLE, [batch, *x_shape[1:]])],
        [helper.make_tensor_value_info(out, DOUBLE, None if out_shape is None else [batch, *out_shape[1:]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return model


def evaluate(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(ReferenceEvaluator(model).run(None, {"x": x})[0])


class _Builder:
    def __init__(self, x_shape: tuple[int, ...], seed: int):
        self.rng = np.random.default_rng(seed)
        self.x_shape = x_shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {"x": x_shape}
        self.order: list[str] = ["x"]  # variable tensors, oldest first
        self.layers: list[str] = []
        self._k = 0

    def name(self, stem: str) -> str:
        self._k += 1
        return f"{stem}{self._k}"

    def const(self, arr: np.ndarray) -> str:
        n = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float64), n))
        return n

    def try_add(self, new_nodes: list[onnx.NodeProto], out: str, desc: str) -> bool:
        """Append the nodes if the partial model runs and ``out`` is non-empty; else leave all as is."""
        model = _run(self.nodes + new_nodes, self.inits, self.x_shape, out)
        try:
            y = evaluate(model, np.zeros(self.x_shape))
        except Exception:  # noqa: BLE001 - ONNX rejects this attribute combination
            return False
        if y.size == 0 or y.ndim == 0 or y.shape[0] != 1 or not np.all(np.isfinite(y)):
            return False
        if _inferred_shape(model, out) != tuple(y.shape[1:]):
            # onnx's shape inference disagrees with its runtime (MaxPool ceil_mode when the last
            # window starts past the input: inferred 3, computed 2). lipgraph reads inferred shapes and
            # then refuses what no longer broadcasts -- sound, but not what this property is about.
            return False
        self.nodes += new_nodes
        self.shapes[out] = tuple(y.shape)
        self.order.append(out)
        self.layers.append(desc)
        return True


def _inferred_shape(model: onnx.ModelProto, out: str) -> tuple[int, ...] | None:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception:  # noqa: BLE001
        return None
    for vi in inferred.graph.output:
        if vi.name == out and vi.type.tensor_type.HasField("shape"):
            return tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim[1:])
    return None


def _weights(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return rng.standard_normal(shape) * (1.5 / np.sqrt(max(1, fan_in)))


@st.composite
def nets(draw: st.DrawFn, max_layers: int = 5, max_side: int = 6) -> Net:
    """A random small DAG of supported ops with random float64 weights."""
    seed = draw(st.integers(0, 2**32 - 1))
    if draw(st.sampled_from([True, False, True])):  # images twice as often: most op kinds need them
        x_shape: tuple[int, ...] = (1, draw(st.integers(1, 3)), draw(st.integers(2, max_side)),
                                    draw(st.integers(2, max_side)))
    else:
        x_shape = (1, draw(st.integers(2, 8)))
    b = _Builder(x_shape, seed)
    cur = "x"
    for _ in range(draw(st.integers(1, max_layers))):
        shape = b.shapes[cur]
        ops = ["act", "act", "mulconst", "bn", "residual", "concat", "maxmin"]
        ops += ["conv"] * 5 + ["maxpool"] * 3 + ["avgpool"] * 3 + ["gap", "flatten"] if len(shape) == 4 else [
            "gemm", "gemm", "matmul"]
        op = draw(st.sampled_from(ops))
        new = _layer(draw, b, cur, shape, op)
        if new is None:  # that op does not apply here: an activation always does
            new = _layer(draw, b, cur, shape, "act")
        cur = new or cur
    if draw(st.booleans()) or len(b.shapes[cur]) != 2:
        shape = b.shapes[cur]
        if len(shape) != 2:
            out = b.name("flat")
            b.try_add([helper.make_node("Flatten", [cur], [out], name=out)], out, "Flatten")
            cur = out
        cur = _layer(draw, b, cur, b.shapes[cur], "gemm") or cur
    model = _run(b.nodes, b.inits, x_shape, cur, batch="N", out_shape=b.shapes[cur])
    onnx.checker.check_model(model)
    return Net(model, x_shape, b.layers)


def _layer(draw: st.DrawFn, b: _Builder, cur: str, shape: tuple[int, ...], op: str) -> str | None:  # noqa: C901
    rng = b.rng
    out = b.name(op)
    d = len(shape) - 2
    if op == "act":
        kind = draw(st.sampled_from(ACTIVATIONS))
        attrs: dict[str, Any] = {}
        inputs = [cur]
        if kind == "LeakyRelu":
            attrs["alpha"] = draw(st.floats(-2.0, 2.0))
        elif kind == "Elu":
            attrs["alpha"] = draw(st.floats(0.05, 2.0))
        elif kind == "HardSigmoid":
            attrs["alpha"] = draw(st.floats(0.05, 2.0))
            attrs["beta"] = draw(st.floats(-1.0, 1.0))
        elif kind == "Clip":
            lo = draw(st.floats(-2.0, 0.0))
            inputs = [cur, b.const(np.array(lo)), b.const(np.array(lo + draw(st.floats(0.1, 3.0))))]
        ok = b.try_add([helper.make_node(kind, inputs, [out], name=out, **attrs)], out, f"{kind}{attrs}")
        return out if ok else None
    if op == "mulconst":
        kind = draw(st.sampled_from(["Mul", "Div", "Add", "Sub"]))
        cshape = (shape[1],) + (1,) * d if draw(st.booleans()) else shape[1:]
        c = rng.standard_normal(cshape)
        if kind == "Div":
            c = np.where(np.abs(c) < 0.3, 0.3, c)
        ins = [cur, b.const(c)] if draw(st.booleans()) or kind in ("Div",) else [b.const(c), cur]
        ok = b.try_add([helper.make_node(kind, ins, [out], name=out)], out, f"{kind} const{cshape} {ins[0] == cur}")
        return out if ok else None
    if op == "bn":
        c = shape[1]
        ins = [cur, b.const(rng.standard_normal(c) * 1.5), b.const(rng.standard_normal(c)),
               b.const(rng.standard_normal(c)), b.const(rng.uniform(0.05, 2.0, c))]
        eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
        ok = b.try_add([helper.make_node("BatchNormalization", ins, [out], name=out, epsilon=eps)], out, "BN")
        return out if ok else None
    if op == "residual":
        same = [t for t in b.order if b.shapes[t] == shape and t != cur]
        if not same:
            return None
        other = draw(st.sampled_from(same))
        kind = draw(st.sampled_from(["Add", "Sub", "Max", "Min"]))
        ok = b.try_add([helper.make_node(kind, [cur, other], [out], name=out)], out, f"{kind}(., {other})")
        return out if ok else None
    if op == "concat":
        fit = [t for t in b.order if len(b.shapes[t]) == len(shape) and b.shapes[t][2:] == shape[2:]]
        other = draw(st.sampled_from(fit))  # cur itself fits: concat(x, x) duplicates
        ok = b.try_add([helper.make_node("Concat", [cur, other], [out], name=out, axis=1)], out,
                       f"Concat(., {other})")
        return out if ok else None
    if op == "maxmin":
        if shape[1] % 2:
            return None
        a, c, mx, mn = b.name("half"), b.name("half"), b.name("max"), b.name("min")
        split = b.name("split_sizes")
        b.inits.append(numpy_helper.from_array(np.array([shape[1] // 2] * 2, dtype=np.int64), split))
        swap = draw(st.booleans())
        nodes = [helper.make_node("Split", [cur, split], [a, c], name=b.name("split"), axis=1),
                 helper.make_node("Max", [a, c], [mx], name=mx),
                 helper.make_node("Min", [a, c], [mn], name=mn),
                 helper.make_node("Concat", [mn, mx] if swap else [mx, mn], [out], name=out, axis=1)]
        ok = b.try_add(nodes, out, "MaxMin" + (" swapped" if swap else ""))
        return out if ok else None
    if op == "gap":
        ok = b.try_add([helper.make_node("GlobalAveragePool", [cur], [out], name=out)], out, "GAP")
        return out if ok else None
    if op == "flatten":
        ok = b.try_add([helper.make_node("Flatten", [cur], [out], name=out)], out, "Flatten")
        return out if ok else None
    if op in ("gemm", "matmul"):
        f = shape[1]
        m = draw(st.integers(1, 8))
        w = _weights(rng, (f, m), f)
        if op == "matmul":
            ok = b.try_add([helper.make_node("MatMul", [cur, b.const(w)], [out], name=out)], out, f"MatMul {f}->{m}")
            return out if ok else None
        trans_b = draw(st.booleans())
        alpha = draw(st.sampled_from([1.0, 1.0, -0.5, 2.0]))
        ins = [cur, b.const(w.T if trans_b else w)]
        if draw(st.booleans()):
            ins.append(b.const(rng.standard_normal(m)))
        node = helper.make_node("Gemm", ins, [out], name=out, transB=int(trans_b), alpha=alpha,
                                beta=draw(st.sampled_from([1.0, 0.5])))
        ok = b.try_add([node], out, f"Gemm {f}->{m} transB={int(trans_b)} alpha={alpha}")
        return out if ok else None
    if op == "conv":
        c = shape[1]
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
        m = groups * draw(st.integers(1, 3))
        ks = [draw(st.integers(1, 3)) for _ in range(d)]
        strides = [draw(st.integers(1, 2)) for _ in range(d)]
        dil = [draw(st.integers(1, 2)) for _ in range(d)]
        attrs = {"kernel_shape": ks, "strides": strides, "dilations": dil, "group": groups}
        mode = draw(st.sampled_from(["pads", "pads", "pads", "SAME_UPPER", "SAME_LOWER", "VALID"]))
        if mode == "pads":
            attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(2 * d)]
        else:
            attrs["auto_pad"] = mode
        w = _weights(rng, (m, c // groups, *ks), c // groups * int(np.prod(ks)))
        ins = [cur, b.const(w)] + ([b.const(rng.standard_normal(m))] if draw(st.booleans()) else [])
        ok = b.try_add([helper.make_node("Conv", ins, [out], name=out, **attrs)], out, f"Conv {c}->{m} {attrs}")
        return out if ok else None
    if op in ("maxpool", "avgpool"):
        ks = [draw(st.integers(1, 3)) for _ in range(d)]
        attrs = {"kernel_shape": ks, "strides": [draw(st.integers(1, 3)) for _ in range(d)],
                 "ceil_mode": int(draw(st.booleans()))}
        if draw(st.booleans()):
            attrs["pads"] = [draw(st.integers(0, k - 1)) for k in ks] + [draw(st.integers(0, k - 1)) for k in ks]
        if op == "maxpool" and draw(st.booleans()):
            attrs["dilations"] = [draw(st.integers(1, 2)) for _ in range(d)]
        if op == "avgpool":
            attrs["count_include_pad"] = int(draw(st.booleans()))
        kind = "MaxPool" if op == "maxpool" else "AveragePool"
        ok = b.try_add([helper.make_node(kind, [cur], [out], name=out, **attrs)], out, f"{kind} {attrs}")
        return out if ok else None
    raise AssertionError(op)


def lower_estimate(net: Net, seed: int = 0, n_points: int = 3) -> float:
    """The largest secant ratio found (a lower estimate of the true Lipschitz constant)."""
    rng = np.random.default_rng(seed)
    shp = net.x_shape
    n = int(np.prod(shp[1:]))
    h = 1e-6
    best = 0.0
    for p in range(n_points):
        x0 = rng.standard_normal(n) * (0.5 if p % 2 == 0 else 2.0)
        xs = np.concatenate([x0[None], x0[None] + h * np.eye(n)])
        y = evaluate(net.model, xs.reshape((-1, *shp[1:]))).reshape(n + 1, -1)
        jac = (y[1:] - y[0]).T / h
        v = np.linalg.svd(jac, full_matrices=False)[2][0] if jac.size else np.zeros(n)
        pairs = []
        for step in (1e-5, 1e-2):
            pairs += [x0 + step * v, x0 - step * v]
        y2 = evaluate(net.model, np.stack(pairs).reshape((-1, *shp[1:]))).reshape(len(pairs), -1)
        for i in range(0, len(pairs), 2):
            num = float(np.linalg.norm(y2[i] - y2[i + 1]))
            den = float(np.linalg.norm(pairs[i] - pairs[i + 1]))
            best = max(best, num / den)
    return best
