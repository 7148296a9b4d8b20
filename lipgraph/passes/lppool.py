"""Recognise torch's export of L2-norm pooling and replace it by an ``LpPool(p=2)`` node.

``torch.nn.LPPool2d(2, k)`` (and deel-torchlip's scaled L2-norm pooling after ``vanilla_export``)
is exported by both torch exporters (seen with torch 2.13, opsets 17 and 18) as::

    Pow(x, 2) -> AveragePool(k, s, pads, count_include_pad=1) -> Sign(a), Abs(a) -> Relu(Abs)
              -> Mul(Sign, Relu) -> Mul(c) -> Pow(0.5)

``Pow``, ``Sign`` and a product of two variable tensors are not Lipschitz on their own, but the
whole chain is ``sqrt(c / K) * ||window||_2`` per window, K = prod(kernel_shape): the average of
squares is >= 0, so ``sign(a) * relu(|a|) = a``. This pass checks every piece exactly (both
exponents, that Sign and Abs read the same average, that the divisor is the full window size K
everywhere, i.e. ``count_include_pad = 1`` or no padding, ``ceil_mode = 0``, no dilation) and
rewrites the chain as ``LpPool(p=2)`` with the same kernel, strides and pads, followed by
``Mul(sqrt(c/K))`` when ``c != K``. The Sign/Abs/Relu block and the Mul(c) are optional, and the
final root may be ``Sqrt``. Anything else is left alone (and the Pow rule refuses, correctly).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from lipgraph.graph import Graph, Node, Tensor
from lipgraph.norms.rounding import gamma
from lipgraph.passes.groupsort import const_value, fused_node, is_std, known_shape, only_consumer


def _scalar(graph: Graph, name: str, operand: str) -> float | None:
    """The value of constant ``name`` when it acts as a scalar on ``operand``.

    It must hold one value, and either be of size 1 or leave ``operand``'s (fully known) shape
    unchanged under broadcasting: a constant of shape (1, 3, 1, 1) on a (1, 1, H, W) tensor
    copies it three times, which the chain's formula does not count.
    """
    v = const_value(graph, name)
    if v is None:
        return None
    if np.size(v) != 1:
        shape = known_shape(graph, operand)
        if shape is None:
            return None
        try:
            if tuple(np.broadcast_shapes(shape, np.shape(v))) != shape:
                return None
        except ValueError:
            return None
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(arr == arr[0]):
        return None
    return float(arr[0])


def _single_reader(graph: Graph, tensor: str) -> Node | None:
    if graph.is_graph_output(tensor):
        return None
    readers = graph.consumers(tensor)
    return readers[0] if len(readers) == 1 else None


def _other_input(node: Node, name: str) -> str | None:
    if len(node.inputs) != 2:
        return None
    if node.inputs[0] == name and node.inputs[1] != name:
        return node.inputs[1]
    if node.inputs[1] == name and node.inputs[0] != name:
        return node.inputs[0]
    return None


def _pool_ok(graph: Graph, pool: Node) -> dict | None:
    """The LpPool attributes when the AveragePool divides every window by the full kernel size."""
    a = pool.attrs
    kernel = [int(k) for k in a.get("kernel_shape", [])]
    if not kernel:
        return None
    rank = len(kernel)
    strides = [int(s) for s in a.get("strides", [1] * rank)]
    pads = [int(p) for p in a.get("pads", [0] * (2 * rank))]
    dil = [int(d) for d in a.get("dilations", [1] * rank)]
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID") or (auto_pad == "VALID" and any(pads)):
        return None
    if any(d != 1 for d in dil) or int(a.get("ceil_mode", 0)) != 0:
        return None
    if any(pads) and int(a.get("count_include_pad", 0)) != 1:
        return None  # border windows would be divided by fewer than K
    if len(strides) != rank or len(pads) != 2 * rank:
        return None
    return {"kernel_shape": kernel, "strides": strides, "pads": pads, "p": 2}


def _power(graph: Graph, pow_node: Node) -> int | None:
    """The exponent of ``Pow(x, p)`` when it is an even integer (then ``x^p = |x|^p``)."""
    if len(pow_node.inputs) != 2 or not graph.is_variable(pow_node.inputs[0]):
        return None
    p = _scalar(graph, pow_node.inputs[1], pow_node.inputs[0])
    if p is None or not math.isfinite(p) or p != int(p) or int(p) < 2 or int(p) % 2 or p > 64:
        return None
    return int(p)


def _match(graph: Graph, pow2: Node) -> tuple[str, str, list[Node], dict, float] | None:
    """(x, y, nodes, pool attrs, scale) for a chain starting at ``Pow(x, p)``, p even.

    ``attrs["p"] == 2`` with the full-window divisor everywhere: an ``LpPool`` rewrite; otherwise
    (other even p, ``ceil_mode``, border divisors): ``attrs["fused"]`` for a ``lipgraph:PowerMeanPool``.
    """
    p = _power(graph, pow2)
    if p is None:
        return None
    x = pow2.inputs[0]
    pool = _single_reader(graph, pow2.outputs[0])
    if not is_std(pool, "AveragePool"):
        return None
    assert pool is not None
    attrs = _pool_ok(graph, pool) if p == 2 else None
    if attrs is None:
        attrs = _general_pool(pool, p)
        if attrs is None:
            return None
    parts: list[Node] = [pow2, pool]
    cur = pool.outputs[0]
    readers = [] if graph.is_graph_output(cur) else graph.consumers(cur)
    # Optional block sign(a) * relu(|a|) (= a, since a >= 0).
    if (
        len(readers) == 2
        and {r.op_type for r in readers} == {"Sign", "Abs"}
        and all(is_std(r, "Sign", "Abs") for r in readers)
    ):
        sign = next(r for r in readers if r.op_type == "Sign")
        ab = next(r for r in readers if r.op_type == "Abs")
        relu = _single_reader(graph, ab.outputs[0])
        if not is_std(relu, "Relu"):
            return None
        assert relu is not None
        mul = _single_reader(graph, relu.outputs[0])
        if not is_std(mul, "Mul") or not only_consumer(graph, sign.outputs[0], mul):
            return None
        assert mul is not None
        if sorted(mul.inputs) != sorted([sign.outputs[0], relu.outputs[0]]):
            return None
        parts += [sign, ab, relu, mul]
        cur = mul.outputs[0]
    nxt = _single_reader(graph, cur)
    c = 1.0
    if is_std(nxt, "Mul"):
        assert nxt is not None
        other = _other_input(nxt, cur)
        cval = _scalar(graph, other, cur) if other is not None else None
        if cval is None or not cval > 0.0 or not math.isfinite(cval):
            return None
        c = cval
        parts.append(nxt)
        cur = nxt.outputs[0]
        nxt = _single_reader(graph, cur)
    if nxt is None or nxt.domain != "ai.onnx":
        return None
    if nxt.op_type == "Pow":
        # The root must be exactly 1/p: x^(1/p + e) is not Lipschitz (it grows like ||x||^(1 + p e), or has
        # an infinite slope at 0), so float32(1/3) or float32(1/6) do not qualify; 1/2, 1/4, 1/8 do.
        if len(nxt.inputs) != 2 or nxt.inputs[0] != cur or _scalar(graph, nxt.inputs[1], cur) != 1.0 / p:
            return None
    elif nxt.op_type != "Sqrt" or p != 2:
        return None
    parts.append(nxt)
    y = nxt.outputs[0]
    # Every intermediate tensor must stay inside the chain.
    inside = {id(p) for p in parts}
    for p in parts[:-1]:
        for o in p.outputs:
            if graph.is_graph_output(o) or any(id(r) not in inside for r in graph.consumers(o)):
                return None
    if "fused" in attrs:
        # Constants that broadcast the data up (a "scalar" of shape (3, 1, 1)) change the function.
        sx, sp, sy = known_shape(graph, x), known_shape(graph, pool.outputs[0]), known_shape(graph, y)
        if sx is None or sp is None or known_shape(graph, pow2.outputs[0]) != sx or sy != sp:
            return None
        return x, y, parts, attrs, c
    k = float(np.prod(attrs["kernel_shape"]))
    return x, y, parts, attrs, math.sqrt(c / k)


def recognise_l2_pooling(graph: Graph) -> None:
    """Replace each exactly matched L2-pooling chain by ``LpPool(p=2)`` (+ ``Mul`` by a scale)."""
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if not is_std(node, "Pow"):
                continue
            m = _match(graph, node)
            if m is None:
                continue
            _rewrite(graph, *m)
            changed = True
            break


def _general_pool(pool: Node, p: int) -> dict | None:
    """Attributes of a ``lipgraph:PowerMeanPool`` for an AveragePool without dilation or auto_pad."""
    a = pool.attrs
    kernel = [int(k) for k in a.get("kernel_shape", [])]
    rank = len(kernel)
    if not rank:
        return None
    strides = [int(s) for s in a.get("strides", [1] * rank)]
    pads = [int(q) for q in a.get("pads", [0] * (2 * rank))]
    if a.get("auto_pad", "NOTSET") not in ("NOTSET",) or any(int(d) != 1 for d in a.get("dilations", [1] * rank)):
        return None
    if len(strides) != rank or len(pads) != 2 * rank or any(q < 0 for q in pads):
        return None
    return {
        "kernel_shape": kernel,
        "strides": strides,
        "pads": pads,
        "p": p,
        "ceil_mode": int(a.get("ceil_mode", 0)),
        "fused": True,
    }


def _rewrite(graph: Graph, x: str, y: str, parts: list[Node], attrs: dict, scale: float) -> None:
    origin = [o for p in parts for o in (p.origin or [p.name])]
    if attrs.pop("fused", False):
        fused = fused_node(graph, "PowerMeanPool", x, y, parts, dict(attrs, scale=scale))
        graph.replace(parts, [fused])
        return
    opset = graph.opsets.get("ai.onnx", 18)
    exact = scale == 1.0
    pooled = y if exact else graph.fresh_name("lppool_out")
    lp = Node(graph.fresh_name("LpPool"), "LpPool", "ai.onnx", [x], [pooled], dict(attrs), opset, origin=origin)
    new = [lp]
    if not exact:
        shape = known_shape(graph, y)
        graph.tensors[pooled] = Tensor(pooled, shape, graph.tensors[y].elem_type, None, True)
        cname = graph.fresh_name("lppool_scale")
        graph.tensors[cname] = Tensor(cname, (), onnx.TensorProto.FLOAT, np.array(scale, dtype=np.float64), False)
        new.append(
            Node(
                graph.fresh_name("LpPoolScale"),
                "Mul",
                "ai.onnx",
                [pooled, cname],
                [y],
                {},
                opset,
                origin=list(origin),
                rho=gamma(2),  # sqrt(c / k) in float64: a quotient and a square root (Higham 2002, Lemma 3.1)
            )
        )
    graph.replace(parts, new)
