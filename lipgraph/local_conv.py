"""Reading a chain with conv layers into the structured local bound (:class:`lipgraph.norms.crown_conv.CrownConv`).

The same chain as :func:`lipgraph.local_chain.read_chain` reads (the per-sample float model's ops, so the
network bounded is the one whose float error is bounded), but conv layers keep their kernel and geometry
instead of becoming dense matrices; dense layers (Gemm / MatMul) are matrices as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lipgraph.norms.conv_apply import ConvNotSupported, explicit_pads
from lipgraph.norms.conv_patches import ConvSpec
from lipgraph.norms.crown_conv import CrownConv, Layer, structured_work
from lipgraph.norms.rounding import gamma

_EPS64 = 2.0**-53


class NotStructured(Exception):
    """Not a chain the structured form takes; the message says why (lipgraph.local_bounds re-raises it as
    its ``NotLocal``)."""


MAX_DENSE = 2**23  # entries of one dense layer's matrix


def _as_map(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    return (int(np.prod(shape)), 1, 1)


def _spec(graph: Any, node: Any, in_hw: tuple[int, int]) -> ConvSpec:
    kernel = graph.tensors[node.inputs[1]].value
    attrs = node.attrs
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 4:
        raise NotStructured(f"Conv '{node.name}' is not 2-D")
    try:  # explicit pads, auto_pad VALID / SAME_* resolved as conv2d_linear (the dense form) resolves them
        pads = explicit_pads(attrs, in_hw, (int(kernel.shape[2]), int(kernel.shape[3])))
    except ConvNotSupported as exc:
        raise NotStructured(f"Conv '{node.name}': {exc}") from None
    return ConvSpec(
        kernel,
        tuple(int(v) for v in attrs.get("strides", (1, 1))),  # type: ignore[arg-type]
        pads,
        tuple(int(v) for v in attrs.get("dilations", (1, 1))),  # type: ignore[arg-type]
        int(attrs.get("group", 1)),
    )


def read_structured(graph: Any, model: Any, conv_node: Callable[[Any, Any], Any]) -> CrownConv:
    """``model``: the chain's :class:`~lipgraph.floaterr.chain_sample.ChainFloatModel`; raises ``NotStructured``."""
    layers, alphas = read_layers(graph, model, conv_node)
    for lay in layers:
        consts = [lay.b, lay.w if lay.w is not None else lay.conv.kernel]  # type: ignore[union-attr]
        if not all(np.all(np.isfinite(c)) for c in consts):
            raise NotStructured("non-finite constants")
    try:
        return CrownConv(layers, alphas)
    except ValueError as exc:
        raise NotStructured(str(exc)) from None


def structured_work_of(graph: Any, model: Any, conv_node: Callable[[Any, Any], Any]) -> float:
    """Work per sample and eps of the structured form, from the layer shapes (no dense matrix is built)."""
    return structured_work(read_layers(graph, model, conv_node, dense=False)[0])


def read_layers(
    graph: Any, model: Any, conv_node: Callable[[Any, Any], Any], dense: bool = True
) -> tuple[list[Layer], list[float]]:
    """The chain's layers and activation slopes; ``dense=False``: dense layers without their matrix (shapes
    only, for the work count)."""
    layers: list[Layer] = []
    alphas: list[float] = []
    shape: tuple[int, ...] = tuple(model.in_shape)
    seg_in: tuple[int, int, int] = _as_map(shape)  # the map entering the current layer (before its reshapes)
    pending: dict[str, Any] | None = None
    biases: list[np.ndarray] = []

    def close(where: str) -> None:
        nonlocal pending, biases
        if pending is None:
            raise NotStructured(f"no affine op before {where}")
        out = pending["out"]
        n = int(np.prod(out))
        b = np.zeros(n)
        for v in biases:
            b = b + np.asarray(v, dtype=np.float64).reshape(-1)
        b_err = (
            np.zeros(n)
            if len(biases) < 2
            else gamma(len(biases) + 1, _EPS64) * sum(np.abs(v.reshape(-1)) for v in biases) * (1 + 1e-6)
        )
        layers.append(Layer(pending["in"], out, b, b_err, conv=pending.get("conv"), w=pending.get("w")))
        pending, biases = None, []

    for op in model.ops:
        if op.kind == "dot":
            if pending is not None or biases:
                raise NotStructured(f"'{op.name}' follows another affine op without an activation between them")
            node = conv_node(graph, op)
            out_map = _as_map(op.out_shape)
            if node is not None:
                if len(shape) != 3 or (layers and tuple(shape) != layers[-1].out_shape):
                    raise NotStructured(f"Conv '{op.name}' reads a reshaped map")
                spec = _spec(graph, node, (int(shape[1]), int(shape[2])))
                pending = {"in": tuple(int(d) for d in shape), "out": out_map, "conv": spec}
            else:
                d_in, d_out = int(np.prod(shape)), int(np.prod(op.out_shape))
                if d_in * d_out > MAX_DENSE:
                    raise NotStructured(f"'{op.name}' would be a {d_out} x {d_in} matrix (limit {MAX_DENSE} entries)")
                w = (
                    np.asarray(op.lin(np.eye(d_in).reshape(d_in, *shape))).reshape(d_in, d_out).T.copy()
                    if dense
                    else np.empty((d_out, 0))
                )
                pending = {"in": seg_in, "out": (d_out, 1, 1), "w": w}
            if op.bias is not None:
                biases.append(np.asarray(op.bias, dtype=np.float64))
        elif op.kind == "add":
            if pending is None:
                raise NotStructured(f"'{op.name}' adds a constant before any affine op of its layer")
            biases.append(np.asarray(op.bias, dtype=np.float64))
        elif op.kind in ("relu", "leaky"):
            close(f"the activation '{op.name}'")
            alphas.append(0.0 if op.kind == "relu" else float(op.alpha))
            seg_in = layers[-1].out_shape
        shape = op.out_shape
    close("the logits")
    if not alphas:
        raise NotStructured("no activation")
    return layers, alphas
