"""Recognise ``x + sum_{i=1..m} a_i A^i x`` written as a chain of one linear op and Adds (SOC).

Skew orthogonal convolutions (Singla and Feizi, ICML 2021) compute ``exp(A) x`` by its truncated
Taylor series: ``z_0 = x, z_i = A z_{i-1} / i, y = z_0 + ... + z_m``. Exporters write it as
``Conv (or MatMul/Gemm) -> [Div/Mul by a scalar] -> Add`` repeated, every step applying the same
weight. Composed op by op, the bound is ``sum_i |a_i| ||A||^i`` (about ``e^||A||``), while
``||p(A)||`` is close to 1 when A is skew. This pass fuses the chain into one ``PowerSeries``
node that carries the operator and the exact coefficients ``a_i`` (products of the scalars, as
Fractions: ``Div(z, 3)`` is exactly ``z / 3`` in real arithmetic); its rule
(lipgraph/rules/families.py) bounds ``||p(A)||``.

Checked exactly: every step is the same operator (equal weight values and attributes, square:
output shape = input shape), each term ``z_i`` is read only by the next step and by its Add,
each partial sum only by the next Add, the first Add adds the chain's own input x. At least two
terms (a single ``x + A x`` is an ordinary residual connection and is left alone). Biases inside
the chain (Conv's bias, ``Add`` of a constant) do not change the Jacobian and are allowed.
Runs before the scale folding pass, which would fold each ``1/i`` into its own copy of the weight.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from lipgraph.graph import Graph, Node
from lipgraph.passes.groupsort import fused_node, is_std, known_shape
from lipgraph.passes.linear_ops import LinearOp, exact_scalar, is_bias_add, linear_op

MIN_TERMS = 2


def _same_op(a: LinearOp, b: LinearOp) -> bool:
    if a.kind != b.kind or a.geometry() != b.geometry():
        return False
    wa = a.matrix if a.kind == "dense" else a.kernel
    wb = b.matrix if b.kind == "dense" else b.kernel
    assert wa is not None and wb is not None
    return wa.shape == wb.shape and bool(np.array_equal(wa, wb))


def _step_op(graph: Graph, z: str, first: LinearOp | None) -> tuple[LinearOp, list[Node], Fraction, str] | None:
    """From term z: the linear reader of z, then scalar/bias ops; returns (op, nodes, coef, next term)."""
    cands = []
    for r in graph.consumers(z):
        if is_std(r, "Conv", "MatMul", "Gemm") and r.inputs[0] == z:
            op = linear_op(graph, r)
            if op is not None and op.kind in ("conv", "dense") and (first is None or _same_op(first, op)):
                cands.append(op)
    if len(cands) != 1:
        return None
    op = cands[0]
    zs, ys = known_shape(graph, z), known_shape(graph, op.node.outputs[0])
    if zs is None or ys != zs:
        return None  # powers need a square operator
    nodes: list[Node] = [op.node]
    coef = Fraction(1)
    t = op.node.outputs[0]
    while True:
        readers = graph.consumers(t)
        if len(readers) != 1 or graph.is_graph_output(t):
            break
        r = readers[0]
        c = exact_scalar(graph, r, t)
        if c is None and not (is_bias_add(graph, r, t) and not _adds_running_sum(graph, r, t)):
            break
        coef *= c if c is not None else 1
        nodes.append(r)
        t = r.outputs[0]
    return op, nodes, coef, t


def _adds_running_sum(graph: Graph, node: Node, t: str) -> bool:
    """An Add of two variable tensors is a running-sum Add, not a bias."""
    return is_std(node, "Add") and all(graph.is_variable(i) for i in node.inputs)


def _may_start(graph: Graph, start: Node, x: str) -> bool:
    """A structural condition every chain starting at ``start`` meets (no weights read): the operator is
    square, and its output reaches, through scalar and bias ops, an Add of ``x``.

    :func:`_match` reads the weights of every linear reader of ``x`` (a float64 copy of each kernel) before
    it looks at the Adds; this walks the same path as :func:`_step_op`'s first step and its Add test, so
    it is False only where :func:`_match` would return None (on a CIFAR ResNet-18: 0.06 s -> 0 of passes).
    """
    zs, ys = known_shape(graph, x), known_shape(graph, start.outputs[0]) if start.outputs else None
    if zs is None or ys != zs:
        return False
    t = start.outputs[0]
    while True:
        readers = graph.consumers(t)
        if any(is_std(r, "Add") and sorted(r.inputs) == sorted([x, t]) for r in readers):
            return True
        if len(readers) != 1 or graph.is_graph_output(t):
            return False
        r = readers[0]
        if exact_scalar(graph, r, t) is None and not (is_bias_add(graph, r, t) and not _adds_running_sum(graph, r, t)):
            return False
        t = r.outputs[0]


def _match(graph: Graph, start: Node) -> tuple[str, str, list[Node], LinearOp, list[Fraction]] | None:
    x = start.inputs[0] if start.inputs else ""
    if not x or not graph.is_variable(x):
        return None
    if not _may_start(graph, start, x):
        return None
    parts: list[Node] = []
    coefs: list[Fraction] = [Fraction(1)]
    running, z = x, x
    first: LinearOp | None = None
    while True:
        step = _step_op(graph, z, first)
        if step is None:
            break
        op, nodes, coef, t = step
        if first is None and op.node is not start:
            return None
        readers = graph.consumers(t)
        adds = [r for r in readers if is_std(r, "Add") and sorted(r.inputs) == sorted([running, t])]
        if len(adds) != 1 or running == t:
            break
        add = adds[0]
        others = [r for r in readers if r is not add]
        # t feeds the Add and at most the next step; the running sum (except x) only the next Add.
        if len(others) > 1 or graph.is_graph_output(t):
            break
        if running != x and (len(graph.consumers(running)) != 1 or graph.is_graph_output(running)):
            break
        first = first or op
        parts.extend(nodes)
        parts.append(add)
        coefs.append(coefs[-1] * coef)
        running, z = add.outputs[0], t
        if not others:
            break
    if first is None or len(coefs) - 1 < MIN_TERMS:
        return None
    # The last term must feed nothing but its Add (else a reader outside would see a partial chain).
    last_readers = graph.consumers(z)
    if len(last_readers) != 1:
        return None
    return x, running, parts, first, coefs


def recognise_power_series(graph: Graph) -> None:
    """Fuse every exactly matched power-series chain into one ``PowerSeries`` node."""
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if not is_std(node, "Conv", "MatMul", "Gemm"):
                continue
            m = _match(graph, node)
            if m is None:
                continue
            x, y, parts, op, coefs = m
            # The weight is the model's own constant (this pass runs before the scale folding) and the
            # coefficients are exact fractions: no float64 rounding to count. A weight some pass computed
            # (Node.rho) is left to the generic rules, which count it.
            if op.node.rho:
                continue
            attrs = {"kind": op.kind, "coefficients": coefs, "terms": len(coefs) - 1}
            if op.kind == "dense":
                attrs["matrix"] = op.matrix
            else:
                attrs.update(
                    kernel=op.kernel,
                    group=op.group,
                    strides=op.strides,
                    dilations=op.dilations,
                    pads_begin=op.pads_begin,
                    pads_end=op.pads_end,
                    spatial=op.spatial,
                )
            graph.replace(parts, [fused_node(graph, "PowerSeries", x, y, parts, attrs)])
            changed = True
            break
