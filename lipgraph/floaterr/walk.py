"""The float error walk: a bound ``e(s) = c + d s`` on ``||F_float(x) - F_real(x)||_2`` for ``||x||_2 = s``.

The walk runs over the model as ONNX Runtime sees it (the pattern passes, which keep the function,
but not the scale folding, which may change intermediate values), in topological order. Each
tensor carries a :class:`~lipgraph.floaterr.local.State`; the Lipschitz factor of each node in
each of its variable inputs comes from the node's own bound rule, called with bound 1 on that input
and 0 on the others (a rule bounds the node over its whole domain, so this bounds how far the
real node moves when that input moves: see docs/floating-point.md, "Propagation").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lipgraph.errors import LipgraphError, Refuse
from lipgraph.floaterr.local import handler_for
from lipgraph.floaterr.state import (
    FLOAT_RANGE,
    ZERO,
    Aff,
    NoFloatBound,
    OpIn,
    State,
    check_subnormals,
    daz_norm,
    has_subnormal,
    overflow_free_norm,
)
from lipgraph.graph import Graph, Node
from lipgraph.rules.registry import RuleContext, lookup

FLOAT32_UNIT_ROUNDOFF = 2.0**-24
TF32_UNIT_ROUNDOFF = 2.0**-11  # TF32 keeps 10 mantissa bits: operands of products are rounded to this
_TYPE_ROUNDOFF = {
    onnx.TensorProto.DOUBLE: 2.0**-53,
    onnx.TensorProto.FLOAT: 2.0**-24,
    onnx.TensorProto.FLOAT16: 2.0**-11,
    onnx.TensorProto.BFLOAT16: 2.0**-8,
}
# The walk itself adds and multiplies O(nodes) nonnegative float64 numbers, each rounded by at
# most 2^-53 relative: a final factor this large absorbs that for graphs of up to ~10^6 ops.
_WALK_SLACK = 1.0 + 1e-9


@dataclass(frozen=True)
class ErrorModel:
    """``||F_float(x) - F_real(x)||_2 <= c + d ||x||_2`` for the certified tensor."""

    c: float
    d: float
    unit_roundoff: float
    dot_operand_roundoff: float
    nodes: int
    # inputs of a larger norm may overflow some float value on the way (the bound above assumes none does)
    max_input_norm: float = math.inf
    subnormals: str = "gradual"  # "flush": subnormal results and operands may be zeroed (FTZ + DAZ, GPU kernels)

    def at(self, input_norms: np.ndarray) -> np.ndarray:
        """The bound for each sample, from the inputs' L2 norms (rounded up)."""
        s = np.asarray(input_norms, dtype=np.float64) * (1.0 + 1e-12)
        return np.nextafter((self.c + self.d * s) * _WALK_SLACK, np.inf)

    def radius_cap(self, input_norms: np.ndarray) -> np.ndarray:
        """Per sample: the largest radius whose ball stays within :attr:`max_input_norm` (0 outside it), so that
        no float value overflows anywhere in a certified ball; rounded down."""
        s = np.asarray(input_norms, dtype=np.float64) * (1.0 + 1e-12)
        if math.isinf(self.max_input_norm) and self.max_input_norm > 0:
            return np.full(s.shape, np.inf)
        return np.maximum(np.nextafter((self.max_input_norm - s) * (1.0 - 1e-12), -np.inf), 0.0)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "a-priori running error bound (per sample, affine in ||x||_2)",
            "c": self.c,
            "d": self.d,
            "unit_roundoff": self.unit_roundoff,
            "dot_operand_roundoff": self.dot_operand_roundoff,
            "nodes": self.nodes,
            "max_input_norm": self.max_input_norm if math.isfinite(self.max_input_norm) else None,
            "subnormals": self.subnormals,
        }


def float_error_model(
    model: onnx.ModelProto,
    input_name: str | None,
    input_shape: tuple[int, ...] | None,
    tensor: str | None = None,
    unit_roundoff: float = FLOAT32_UNIT_ROUNDOFF,
    dot_operand_roundoff: float = 0.0,
    analysis: Any = None,
    graph: Graph | None = None,
    subnormals: str = "gradual",
) -> ErrorModel:
    """The error bound of ``tensor`` (default: the logits lipgraph certifies) of ``model``.

    ``unit_roundoff`` is the rounding of every float op (at least the tensor type's own, 2^-24 for
    float32); ``dot_operand_roundoff`` the rounding of the operands of the products inside Gemm,
    MatMul and Conv before they are multiplied (0 for float32 kernels, 2^-11 for TF32).
    ``analysis``: the :class:`~lipgraph.analyze.Analysis` of the same model, whose per-node factors
    are reused for nodes the passes left unchanged (saves recomputing conv norms).
    ``subnormals``: "gradual" (IEEE 754's default, ONNX Runtime's CPU provider) or "flush" (results below the
    normal range may be zeroed and subnormal operands read as zero: a CUDA session; docs/floating-point.md).
    Raises :class:`~lipgraph.errors.LipgraphError` naming the op when a node has no error model.
    """
    from lipgraph.graph_build import build_graph
    from lipgraph.passes import default_passes, run_passes
    from lipgraph.rules import load_rules

    load_rules()
    flush = check_subnormals(subnormals) == "flush"
    if graph is None:  # ``graph``: the same construction, already made by the caller (lipgraph.chain.unfused_graph)
        graph = build_graph(model, input_name, input_shape)
        # Only the passes without which the graph could not be bounded: scale folding would change intermediate
        # values (magnitudes are what matter here), and fused linear or residual structures stand for several
        # ops that ONNX Runtime rounds one by one; their generic rules propagate earlier errors soundly.
        run_passes(graph, default_passes(tightening=False))
    target = tensor or graph.output_name
    known = _known_factors(analysis)
    regions = _fused_regions(analysis, graph)
    states: dict[str, State] = {graph.input_name: State(Aff(0.0, 1.0), ZERO, Aff(0.0, 1.0), 0)}
    for node in graph.nodes:
        if not any(i and i in states for i in node.inputs):
            continue
        try:
            outs = _node_states(graph, node, states, unit_roundoff, dot_operand_roundoff, known, flush)
        except NoFloatBound:
            raise
        except Refuse as r:
            raise NoFloatBound(f"no float-error bound for {node.op_type} '{node.name}': {r.reason}") from None
        for name, st in zip(node.outputs, outs, strict=True):
            if name:
                states[name] = st
        for name in node.outputs:
            if name in regions and regions[name][0] in states:
                better = _through_region(graph, states, regions[name], name, unit_roundoff, dot_operand_roundoff, flush)
                if better is not None:
                    states[name] = better
        if target in states:
            break
    if target not in states:
        raise LipgraphError(f"internal: the float error walk did not reach '{target}'")
    err = states[target].err
    if not (math.isfinite(err.c) and math.isfinite(err.d)):
        raise NoFloatBound("the float error bound of the logits is not finite (huge or non-finite constants)")
    s_max = _max_input_norm(graph, states)
    return ErrorModel(err.c, err.d, unit_roundoff, dot_operand_roundoff, len(graph.nodes), s_max, subnormals)


def _max_input_norm(graph: Graph, states: dict[str, State]) -> float:
    """The largest input norm for which no tensor the walk reached can overflow its float format (Higham's
    model, and so every bound here, assumes no overflow): a certified ball must stay inside it."""
    out = math.inf
    for name, st in states.items():
        t = graph.tensors.get(name)
        limit, u = FLOAT_RANGE.get(int(t.elem_type or 0) if t is not None else 0, FLOAT_RANGE[onnx.TensorProto.FLOAT])
        out = min(out, overflow_free_norm(st, limit, u))
    return out


def _known_factors(analysis: Any) -> dict[str, tuple[Node, Graph, float]]:
    """Canonical nodes whose rule gave its own factor, by name (for :func:`_same_node`)."""
    if analysis is None:
        return {}
    # a bound read back from a file (`certify --bound`) keeps no factors: then every node is recomputed
    factors = {row.name: row.factor for row in analysis.nodes if getattr(row, "factor", None) is not None}
    if not factors:
        return {}
    return {n.name: (n, analysis.graph, factors[n.name]) for n in analysis.graph.nodes if n.name in factors}


def _same_node(a: Node, ga: Graph, b: Node, gb: Graph) -> bool:
    """The same op on the same tensors with the same constants (so the same rule result)."""
    if (a.op_type, a.domain, a.opset, a.inputs, a.outputs) != (b.op_type, b.domain, b.opset, b.inputs, b.outputs):
        return False
    if repr(a.attrs) != repr(b.attrs):
        return False
    for name in a.inputs:
        if not name:
            continue
        ta, tb = ga.tensors.get(name), gb.tensors.get(name)
        if ta is None or tb is None or ta.variable != tb.variable or ga.shape_of(name) != gb.shape_of(name):
            return False
        if not ta.variable and (
            ta.value is None
            or tb.value is None
            or ta.value.dtype != tb.value.dtype
            or not np.array_equal(ta.value, tb.value)
        ):
            return False
    return True


def _node_states(
    graph: Graph,
    node: Node,
    states: dict[str, State],
    u: float,
    u_dot: float,
    known: dict[str, tuple[Node, Graph, float]] | None = None,
    flush: bool = False,
) -> list[State]:
    ins: list[State | None] = [states.get(i) if i and graph.is_variable(i) else None for i in node.inputs]
    for i, st in zip(node.inputs, ins, strict=True):
        if i and graph.is_variable(i) and st is None:
            raise NoFloatBound(f"no float-error state for '{i}', an input of {node.op_type} '{node.name}'")
    if flush:
        ins = _operands_read_as_zero(graph, node, ins)
    reuse = (known or {}).get(node.name)
    n_var = sum(1 for st in ins if st is not None)
    if reuse is not None and n_var == 1 and len(node.outputs) == 1 and _same_node(node, graph, reuse[0], reuse[1]):
        factors = [[reuse[2] if st is not None else 0.0 for st in ins]]
    else:
        factors = _factors(graph, node, ins)
    out_t = graph.tensors.get(node.outputs[0])
    u_node = max(u, _TYPE_ROUNDOFF.get(out_t.elem_type if out_t and out_t.elem_type else 0, 0.0))
    handler = handler_for(node, graph)
    return handler(OpIn(node, graph, ins, factors, u_node, u_dot))


def _operands_read_as_zero(graph: Graph, node: Node, ins: list[State | None]) -> list[State | None]:
    """The input states as a kernel that reads subnormal operands as zero (DAZ) sees them.

    DAZ replaces each float input ``v`` by ``v + delta`` with ``|delta_j| < tau`` (the format's smallest normal
    number) where ``v_j`` is subnormal, 0 elsewhere: an extra input error of at most ``tau sqrt(n)``, which the
    node's Lipschitz factor carries to its output like any earlier error (for a product ``w x`` with subnormal
    ``x`` that is ``|w| tau``, summed over the weights). The node's own rounding is still bounded with the
    magnitudes of the unflushed values, which are entrywise at least as large. A constant with subnormal entries
    would make the GPU compute another network, whose distance to this one no factor bounds: refused. So is a
    subnormal float attribute (ONNX stores them as float32): a Gemm ``alpha`` read as zero drops the product."""
    for key, value in node.attrs.items():
        vals = value if isinstance(value, (list, tuple)) else [value]
        if vals and all(type(v) is float for v in vals) and has_subnormal(np.asarray(vals), 2.0**-24):
            raise NoFloatBound(
                f"the attribute '{key}' of {node.op_type} '{node.name}' is subnormal, which a GPU kernel may read as "
                "zero; set it to zero in the model, or certify on the CPU provider"
            )
    out: list[State | None] = []
    for name, st in zip(node.inputs, ins, strict=True):
        t = graph.tensors.get(name) if name else None
        if st is None:
            if t is not None and not t.variable and t.value is not None and np.asarray(t.value).dtype.kind == "f":
                u_c = _TYPE_ROUNDOFF.get(int(t.elem_type or 0), 2.0**-24)
                if has_subnormal(t.value, u_c):
                    raise NoFloatBound(
                        f"the constant '{name}' of {node.op_type} '{node.name}' has subnormal entries, which a GPU "
                        "kernel may read as zero; set them to zero in the model, or certify on the CPU provider"
                    )
            out.append(None)
            continue
        u_in = _TYPE_ROUNDOFF.get(int(t.elem_type or 0) if t is not None else 0)
        if u_in is None:  # not a float tensor (indices, shapes): nothing to flush
            out.append(st)
            continue
        shape = graph.shape_of(name)
        if shape is None or any(d is None for d in shape):
            raise NoFloatBound(f"the shape of '{name}', an input of {node.op_type} '{node.name}', is unknown")
        n = int(np.prod([int(d) for d in shape], dtype=np.int64))
        out.append(State(st.mag, st.err + Aff(daz_norm(n, u_in)), st.terms, st.fan))
    return out


def _factors(graph: Graph, node: Node, ins: list[State | None]) -> list[list[float]]:
    """``[output][input]``: the rule's bound with 1 on that input and 0 on the other variable ones."""
    spec = lookup(node.domain, node.op_type, node.opset)
    if spec is None:
        raise NoFloatBound(f"no bound rule for {node.op_type} '{node.name}'")
    n_out = len(node.outputs)
    out = [[0.0] * len(ins) for _ in range(n_out)]
    for i, st in enumerate(ins):
        if st is None:
            continue
        in_b: list[float | None] = [None if s is None else (1.0 if j == i else 0.0) for j, s in enumerate(ins)]
        vals = spec.fn(RuleContext(node, graph, in_b)).output_bounds(n_out)
        for o, v in enumerate(vals):
            if not (v >= 0 and math.isfinite(v)):
                raise NoFloatBound(f"{node.op_type} '{node.name}' has no finite Lipschitz factor")
            out[o][i] = v
    return out


def _fused_regions(analysis: Any, graph: Graph) -> dict[str, tuple[str, float]]:
    """Output tensor -> (input tensor, Lipschitz factor) of every single-input region that a tightening pass
    fused into one node of the analysis (a sandwich, a power series, a composed linear map, ...).

    The walk runs on the unfused ops, whose generic factors multiply up inside such a region (about 3 per
    residual block); through the region, earlier errors grow only by the fused node's own factor.
    """
    from lipgraph.domains import LIPGRAPH_DOMAIN

    if analysis is None or getattr(analysis, "graph", None) is None:
        return {}
    factors = {row.name: row.factor for row in analysis.nodes if getattr(row, "factor", None) is not None}
    unfused = {n.name for n in graph.nodes}
    out: dict[str, tuple[str, float]] = {}
    for node in analysis.graph.nodes:
        if node.domain != LIPGRAPH_DOMAIN or node.name in unfused or node.name not in factors:
            continue
        var = [i for i in node.inputs if i and analysis.graph.is_variable(i)]
        outs = [o for o in node.outputs if o]
        if len(var) != 1 or len(outs) != 1 or not graph.is_variable(var[0]) or not graph.is_variable(outs[0]):
            continue
        f = float(factors[node.name])
        if math.isfinite(f) and f >= 0:
            out[outs[0]] = (var[0], f)
    return out


def _through_region(
    graph: Graph,
    states: dict[str, State],
    region: tuple[str, float],
    end: str,
    u: float,
    u_dot: float,
    flush: bool = False,
) -> State | None:
    """The state of ``end`` from the region's factor ``L`` instead of its ops' factors, or None.

    With ``a`` the region's input and ``F`` its map, the float output is ``F_float(a_float)``, and
    ``||F_float(a_float) - F(a)|| <= ||F_float(a_float) - F(a_float)|| + L ||a_float - a||``. The first term is
    the region's own rounding on an input of norm at most ``mag_a + err_a``: the same walk over the region's
    ops started from that magnitude and no error. Likewise ``||F(a)|| <= ||F(0)|| + L ||a||``, with
    ``||F(0)||`` from the walk started at zero. Either way the result is a sound bound; the smaller is kept.
    """
    start, lip = region
    a = states[start]
    local = _walk_region(graph, start, end, State(a.fmag, ZERO, a.terms, a.fan), u, u_dot, flush)
    at_zero = _walk_region(graph, start, end, State(ZERO, ZERO, ZERO, 0), u, u_dot, flush)
    if local is None or at_zero is None:
        return None
    generic = states[end]
    err = a.err.scale(lip) + local.err
    mag = at_zero.mag + a.mag.scale(lip)  # at_zero.mag bounds ||F(0)|| (for every input norm s)
    pick_err = err if err.c + err.d < generic.err.c + generic.err.d else generic.err
    pick_mag = mag if mag.c + mag.d < generic.mag.c + generic.mag.d else generic.mag
    return State(pick_mag, pick_err, generic.terms, generic.fan)


def _walk_region(
    graph: Graph, start: str, end: str, init: State, u: float, u_dot: float, flush: bool = False
) -> State | None:
    """Walk the ops fed (only) from ``start`` until ``end`` is reached; None when it is not."""
    local: dict[str, State] = {start: init}
    begun = False
    for node in graph.nodes:
        if not begun:
            begun = start in node.inputs
            if not begun:
                continue
        var = [i for i in node.inputs if i and graph.is_variable(i)]
        if not var or any(i not in local for i in var):
            continue  # outside the region (it also reads another variable tensor)
        try:
            outs = _node_states(graph, node, local, u, u_dot, flush=flush)
        except (NoFloatBound, Refuse):
            return None
        for name, st in zip(node.outputs, outs, strict=True):
            if name:
                local[name] = st
        if end in local:
            return local[end]
    return None
