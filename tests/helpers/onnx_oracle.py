"""Oracles for tests: tiny ONNX models, their exact dense matrices, and Jacobian-norm lower estimates.

Everything here is independent of lipgraph's rules: the truth comes from running the model
(onnxruntime, or onnx's reference evaluator in float64) and from numpy's SVD.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = Sequence[int | str | None]


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: Sequence[tuple[str, Shape]],
    outputs: Sequence[str | tuple[str, Shape | None]],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    elem_type: int = TensorProto.FLOAT,
    extra_opsets: dict[str, int] | None = None,
    ir_version: int | None = None,
) -> onnx.ModelProto:
    """A model from nodes; ``inputs`` are float inputs, outputs have unknown shape unless given."""
    ins = [helper.make_tensor_value_info(n, elem_type, list(s)) for n, s in inputs]
    outs = []
    for o in outputs:
        name, shape = (o, None) if isinstance(o, str) else o
        outs.append(helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape)))
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "test", ins, outs, inits)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    # Keep the IR version old enough for the installed onnxruntime.
    model.ir_version = ir_version if ir_version is not None else min(model.ir_version, 9 if opset <= 20 else 10)
    return model


def one_node(
    op: str,
    x_shape: Shape,
    consts: dict[str, np.ndarray] | None = None,
    input_order: Sequence[str] | None = None,
    opset: int = 17,
    n_outputs: int = 1,
    domain: str = "",
    **attrs: Any,
) -> onnx.ModelProto:
    """A one-node model ``op(x, consts...)``; ``input_order`` names the node inputs (default x, then consts)."""
    consts = consts or {}
    order = list(input_order) if input_order is not None else ["x", *consts]
    outs = [f"y{i}" if n_outputs > 1 else "y" for i in range(n_outputs)]
    node = helper.make_node(op, order, outs, name=f"{op.lower()}_node", domain=domain, **attrs)
    return make_model([node], [("x", x_shape)], outs, consts, opset=opset)


# ---------------------------------------------------------------------------- running models
def runner(model: onnx.ModelProto, backend: str = "ort") -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """A function feeds -> outputs, with onnxruntime (float32 models) or onnx's reference evaluator."""
    if backend == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return lambda feeds: [np.asarray(o) for o in sess.run(None, feeds)]
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(model)
    return lambda feeds: [np.asarray(o) for o in ev.run(None, feeds)]


def dense_matrix(
    model: onnx.ModelProto,
    x_shape: Sequence[int],
    input_name: str = "x",
    output_index: int = 0,
    backend: str = "ort",
    dtype: Any = None,
) -> np.ndarray:
    """The matrix of an affine model: columns ``f(e_j) - f(0)``, one run per basis vector.

    By default the model runs in float64 (its float32 weights converted exactly, so it is the same
    function), which keeps ``f(e_j) - f(0)`` exact to ~1e-16 even with large constant offsets; if
    onnxruntime has no float64 kernel for an op, it runs in float32 instead.
    """
    if dtype is None:
        try:
            return dense_matrix(to_float64(model), x_shape, input_name, output_index, backend, np.float64)
        except Exception:  # noqa: BLE001 - no double kernel for some op: fall back to float32
            dtype = np.float32
    run = runner(model, backend)
    n = int(np.prod(x_shape))
    zero = np.zeros(x_shape, dtype=dtype)
    base = run({input_name: zero})[output_index].astype(np.float64).ravel()
    cols = []
    for j in range(n):
        e = np.zeros(n, dtype=dtype)
        e[j] = 1.0
        cols.append(run({input_name: e.reshape(x_shape)})[output_index].astype(np.float64).ravel() - base)
    return np.stack(cols, axis=1) if cols else np.zeros((base.size, 0))


def exact_norm(model: onnx.ModelProto, x_shape: Sequence[int], **kw: Any) -> float:
    """Exact L2 operator norm of an affine model (largest singular value of its dense matrix)."""
    m = dense_matrix(model, x_shape, **kw)
    return float(np.linalg.svd(m, compute_uv=False)[0]) if m.size else 0.0


# ---------------------------------------------------------------------------- float64 copies
def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float64: float32 initializers, inputs, outputs, Constant values
    and Cast targets become double, so finite differences are accurate."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, init in enumerate(list(g.initializer)):
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init).astype(np.float64)
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
    return m


def max_jacobian_norm(
    model: onnx.ModelProto,
    x_shape: Sequence[int],
    n_points: int = 8,
    seed: int = 0,
    input_name: str = "x",
    output_index: int = 0,
    scale: float = 1.0,
    h: float = 1e-6,
    points: Sequence[np.ndarray] | None = None,
) -> float:
    """A certified LOWER estimate of the model's Lipschitz constant (never more than the truth).

    At each random point, a central-difference Jacobian (float64, reference evaluator) gives the
    direction v of its top singular vector; the value returned is the secant ratio
    ``||f(x + h v) - f(x - h v)|| / (2 h)``, which is at most the true Lipschitz constant.
    """
    run = runner(to_float64(model), backend="ref")
    rng = np.random.default_rng(seed)
    n = int(np.prod(x_shape))

    def f(x: np.ndarray) -> np.ndarray:
        return run({input_name: x.reshape(x_shape)})[output_index].astype(np.float64).ravel()

    pts = list(points) if points is not None else [rng.standard_normal(n) * scale for _ in range(n_points)]
    best = 0.0
    for x in pts:
        x = np.asarray(x, dtype=np.float64).ravel()
        cols = []
        for j in range(n):
            e = np.zeros(n)
            e[j] = h
            cols.append((f(x + e) - f(x - e)) / (2 * h))
        jac = np.stack(cols, axis=1)
        _, _, vt = np.linalg.svd(jac, full_matrices=False)
        v = vt[0]
        best = max(best, float(np.linalg.norm(f(x + h * v) - f(x - h * v)) / (2 * h)))
    return best


def spectral(a: np.ndarray) -> float:
    """Largest singular value in float64 (the exact norm of a dense matrix)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    return float(np.linalg.svd(a, compute_uv=False)[0]) if a.size else 0.0


def check_linear_bound(model, x_shape, exact_claimed: bool, rel: float = 1e-6) -> tuple[float, float]:
    """The analyzer's bound of a linear model against its exact norm: sound always, tight where claimed."""
    from lipgraph import analyze

    bound = analyze(model).bound
    exact = exact_norm(model, x_shape)
    assert bound >= exact * (1 - 1e-7), (bound, exact)
    if exact_claimed:
        assert bound <= exact * (1 + rel), (bound, exact)
    return bound, exact
