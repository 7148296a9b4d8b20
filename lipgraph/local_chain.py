"""Reading a chain of (affine, ReLU / LeakyReLU) layers for the per-sample local bounds.

:func:`read_chain` turns the per-sample float model's ops (:mod:`lipgraph.floaterr.chain_sample`) into the
layers :mod:`lipgraph.norms.crown_l2` (dense matrices) or :mod:`lipgraph.norms.crown_conv` (conv layers kept as
convolutions) propagate bounds through, choosing the cheaper form by counted work; anything else is
:class:`NotLocal` with the reason. :mod:`lipgraph.local_bounds` runs the bounds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lipgraph.norms.crown_conv import CrownConv
from lipgraph.norms.crown_l2 import Affine, CrownL2, chain_work

# The structured conv form (conv layers as convolutions) counts its work the same way but, measured, runs ~3x
# fewer multiply-adds per ms than the dense form's matrix products (bench/conv_local.py: digits CNN 2.2e7 in
# ~11 ms, MNIST CNN 2.7e8 in ~160 ms per sample and eps, dense 3.7e7 in ~7 ms).
STRUCTURED_COST = 3.0
MAX_DENSE = 2**23  # entries of one layer's dense matrix (a conv layer is expanded to one)
_EPS64 = 2.0**-53


class NotLocal(Exception):
    """The model is not a chain the local bounds handle; the message says why."""


def _conv_node(graph: Any, op: Any) -> Any:
    """The graph's Conv node behind a chain op, or None."""
    if op.kind != "dot":
        return None
    for node in graph.nodes:
        if node.name == op.name and node.op_type == "Conv":
            return node
    return None


def read_chain(
    graph: Any, logits: str, max_work: float = math.inf, form: str = "auto", max_structured_work: float = math.inf
) -> CrownL2 | CrownConv:
    """The chain from ``graph.input_name`` to ``logits`` as (affine, activation) layers, or :class:`NotLocal`.

    ``form``: ``dense`` (every layer a matrix: :class:`CrownL2`), ``structured`` (conv layers as convolutions:
    :class:`CrownConv`, for chains with a conv layer) or ``auto`` (the structured form for a chain with a conv
    layer where its work per sample is below the dense form's; the dense form otherwise).

    Reads the per-sample float model's ops (``lipgraph.floaterr.chain_sample``), so the network bounded here
    is the one whose float error is bounded there. Each segment between activations must be reshapes, one
    Gemm / MatMul / Conv, then constant additions; its matrix is the op applied to the standard basis (exact:
    every output then holds a single product with 1). A chain needing more than ``max_work`` multiply-adds per
    sample and radius is refused before any matrix is built."""
    from lipgraph.floaterr.chain_sample import ChainFloatModel, NotAChainForFloat
    from lipgraph.floaterr.state import NoFloatBound, gamma

    try:
        model = ChainFloatModel(graph, logits, 2.0**-24, 0.0)
    except (NotAChainForFloat, NoFloatBound) as exc:
        raise NotLocal(str(exc)) from None
    sizes = [int(np.prod(op.out_shape)) for op in model.ops if op.kind == "dot"]
    work = chain_work(sizes, int(np.prod(model.in_shape)))
    if form != "dense" and any(_conv_node(graph, op) is not None for op in model.ops):
        from lipgraph.local_conv import NotStructured, read_structured, structured_work_of

        fits = all(
            int(np.prod(a)) * int(np.prod(op.out_shape)) <= MAX_DENSE
            for a, op in zip([model.in_shape] + [o.out_shape for o in model.ops], model.ops, strict=False)
            if op.kind == "dot"
        )
        # structured work is counted the same way but runs ~STRUCTURED_COST x slower per multiply-add
        # (small windows, numpy overheads: bench/conv_local.py), so the dense form stays where it is cheaper
        try:
            s_work = structured_work_of(graph, model, _conv_node)
        except NotStructured as exc:
            if form == "structured":
                raise NotLocal(str(exc)) from None
            s_work = math.inf  # not a chain the structured form takes: the dense form below, or its refusal
        if form == "structured" or (
            s_work < math.inf and (not fits or work > max_work or STRUCTURED_COST * s_work < work)
        ):
            if s_work > max_structured_work:
                raise NotLocal(
                    f"{s_work:.3g} multiply-adds per sample and eps in the structured conv form "
                    f"(auto's limit {max_structured_work:.3g})"
                )
            try:
                return read_structured(graph, model, _conv_node)
            except NotStructured as exc:
                raise NotLocal(str(exc)) from None
    if work > max_work:
        raise NotLocal(f"{work:.3g} multiply-adds per sample and eps (auto's limit {max_work:.3g})")
    layers: list[Affine] = []
    alphas: list[float] = []
    shape: tuple[int, ...] = model.in_shape
    w: np.ndarray | None = None
    biases: list[np.ndarray] = []

    def close(where: str) -> None:
        nonlocal w, biases
        if w is None:
            raise NotLocal(f"no affine op before {where}")
        b = np.zeros(w.shape[0])
        for v in biases:
            b = b + v.reshape(-1)
        b_err = (
            np.zeros(w.shape[0])
            if len(biases) < 2
            else gamma(len(biases) + 1, _EPS64) * sum(np.abs(v.reshape(-1)) for v in biases) * (1 + 1e-6)
        )
        layers.append(Affine(w, b, b_err))
        w, biases = None, []

    for op in model.ops:
        if op.kind == "dot":
            if w is not None or biases:
                raise NotLocal(f"'{op.name}' follows another affine op without an activation between them")
            d_in, d_out = int(np.prod(shape)), int(np.prod(op.out_shape))
            if d_in * d_out > MAX_DENSE:
                raise NotLocal(f"'{op.name}' would be a {d_out} x {d_in} matrix (limit {MAX_DENSE} entries)")
            assert op.lin is not None
            w = np.asarray(op.lin(np.eye(d_in).reshape(d_in, *shape))).reshape(d_in, d_out).T.copy()
            if op.bias is not None:
                biases.append(np.asarray(op.bias, dtype=np.float64))
        elif op.kind == "add":
            if w is None:
                raise NotLocal(f"'{op.name}' adds a constant before any affine op of its layer")
            assert op.bias is not None
            biases.append(np.asarray(op.bias, dtype=np.float64))
        elif op.kind in ("relu", "leaky"):
            close(f"the activation '{op.name}'")
            alphas.append(0.0 if op.kind == "relu" else float(op.alpha))
        shape = op.out_shape
    close("the logits")
    if not alphas:
        raise NotLocal("no activation")
    if not all(np.all(np.isfinite(lay.w)) and np.all(np.isfinite(lay.b)) for lay in layers):
        raise NotLocal("non-finite constants")
    return CrownL2(layers, alphas)
