"""The walker: passes, then every data-path node's rule in topological order (docs/composition.md)."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lipgraph.errors import LipgraphError, Refusal, Refuse, UnsupportedModelError
from lipgraph.graph import FLOAT_TYPES, Graph, Node
from lipgraph.graph_build import build_graph
from lipgraph.loader import load_model, model_sha256
from lipgraph.norms import lapack, values_discarded
from lipgraph.rules.registry import Bound, RuleContext, lookup


def _composed_up(outs: list[float], in_bounds: list[float | None], factor: float | None = None) -> list[float]:
    """A rule's output bounds, moved up by the rounding of composing them in float64.

    A rule returns ``factor * L_in`` (or sums of ``sqrt(k) L_i``, a square root, a division by the count):
    rounded to nearest, each product can land half an ulp below the exact one, and in the subnormal range up
    to 2^-1075 below (or at 0: 1e-200 x 1e-200). The rules' factors are upper bounds themselves; these few
    operations per node (at most ``4 + 3 k`` for ``k`` variable inputs) are counted here once, for all rules:
    ``v (1 + c u)`` rounded up plus ``c 2^-1074`` (each rounding errs by at most ``max(u |x|, 2^-1075)``;
    Higham 2002, ch. 2). Outputs of nodes whose inputs are all constant (bound 0) stay 0, and so does a
    1-Lipschitz node's ``1.0 * L_in`` (reported factor exactly 1, one variable input, output equal to it: exact)."""
    live = [b for b in in_bounds if b]
    if not live:
        return outs
    if factor == 1.0 and len(live) == 1 and all(v == live[0] for v in outs):
        return outs
    c = 4 + 3 * len(live)
    return [
        v if (math.isinf(v) or math.isnan(v) or v < 0) else float(np.nextafter(v * (1.0 + c * 2.0**-53), np.inf))
        + c * 2.0**-1074
        for v in outs
    ]


@dataclass
class NodeBound:
    """One row of the per-node table."""

    name: str
    op_type: str
    domain: str
    method: str
    bound: float  # the node's own factor (or its output bound, for multi-input nodes)
    cumulative: float  # L of its (first) output w.r.t. the model input
    lower: float | None = None
    origin: list[str] = field(default_factory=list)
    factor: float | None = None  # the rule's own factor when it gave one (output = factor * L_in)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "op_type": self.op_type,
            "bound": self.bound,
            "method": self.method,
            "cumulative": self.cumulative,
        }
        if self.domain != "ai.onnx":
            out["domain"] = self.domain
        if self.lower is not None:
            out["lower"] = self.lower
        if self.origin and self.origin != [self.name]:
            out["origin"] = self.origin
        return out


@dataclass
class Analysis:
    """The result of :func:`analyze`: the network bound and where it comes from."""

    bound: float
    nodes: list[NodeBound]
    warnings: list[str]
    meta: dict[str, Any]
    graph: Graph
    tensor_bounds: dict[str, float]

    @property
    def input_name(self) -> str:
        return self.graph.input_name

    @property
    def logits_name(self) -> str:
        return self.graph.output_name

    def bound_of(self, tensor: str) -> float:
        return self.tensor_bounds[tensor]

    def to_json(self) -> dict[str, Any]:
        return {
            "lipschitz_bound": self.bound,
            "nodes": [n.to_json() for n in self.nodes],
            "warnings": list(self.warnings),
            "meta": dict(self.meta),
        }


# Distributions that install each module (the GPU and other builds of onnxruntime install the same module).
_DISTRIBUTIONS = {
    "scipy": ("scipy",),
    "networkx": ("networkx",),
    "onnxruntime": (
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxruntime-directml",
        "onnxruntime-openvino",
        "onnxruntime-training",
        "onnxruntime-silicon",
        "ort-nightly",
        "ort-nightly-gpu",
    ),
}


def _module_version(module: str) -> str:
    """The version of ``module`` without importing it (importing scipy and onnxruntime costs 25 ms or more).

    An imported module reports its own ``__version__``; otherwise the installed distribution's metadata
    answers. When several distributions provide the module (onnxruntime and onnxruntime-gpu side by side)
    the metadata cannot tell which one Python would import: the module is imported then.
    """
    import importlib
    import importlib.util
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    try:
        if importlib.util.find_spec(module) is None:
            return "not installed"
    except (ImportError, ValueError):
        return "not installed"
    found = []
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            found.append(dist_version(dist))
        except PackageNotFoundError:
            continue
    if len(set(found)) == 1:
        return found[0]
    try:  # no metadata, or several distributions disagree: ask the module itself
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except ImportError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of lipgraph and its dependencies, read without importing the ones not yet imported."""
    from lipgraph.version import __version__

    return {
        "lipgraph": __version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "scipy": _module_version("scipy"),
        "networkx": _module_version("networkx"),
        "click": _click_version(),
        "onnxruntime": _module_version("onnxruntime"),
    }


def _click_version() -> str:
    """click.__version__ is deprecated (click 8.2+): ask the installed distribution."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("click")
    except PackageNotFoundError:
        return "unknown"


def analyze(
    model: str | os.PathLike[str] | onnx.ModelProto,
    input_name: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Analysis:
    """Bound the L2 Lipschitz constant of ``model`` from its input to its logits.

    ``model`` is a path or a ``ModelProto``; ``progress(done, total)`` is called as nodes are bounded.
    Raises :class:`UnsupportedModelError` listing every
    node without a sound bound, or another :class:`LipgraphError` for unreadable input.
    """
    from lipgraph.passes import run_passes
    from lipgraph.rules import load_rules

    load_rules()
    lapack.reset_used()
    t0 = time.perf_counter()
    if isinstance(model, onnx.ModelProto):
        proto, sha = model, model_sha256(model)
        source = "<ModelProto>"
    else:
        proto, sha = load_model(model)
        source = str(model)
    graph = build_graph(proto, input_name, input_shape)
    run_passes(graph)
    nodes, tensor_bounds, warnings_ = _walk(graph, progress)
    bound = tensor_bounds.get(graph.output_name)
    if bound is None:
        raise LipgraphError(f"the logits '{graph.output_name}' do not depend on the input '{graph.input_name}'")
    elapsed = time.perf_counter() - t0
    meta = {
        "model": source,
        "model_sha256": sha,
        "opset": graph.opsets.get("ai.onnx"),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "input": graph.input_name,
        "input_shape": [d if d is not None else "?" for d in (graph.shape_of(graph.input_name) or ())],
        "logits": graph.output_name,
        "versions": versions(),
        "time_bound_s": round(elapsed, 4),
    }
    if lapack.backend_used() is not None:  # which LAPACK potrf the Cholesky certificates ran on
        meta["potrf_backend"] = lapack.backend_used()
    return Analysis(float(bound), nodes, graph.warnings + warnings_, meta, graph, tensor_bounds)


def _counted(nodes: list[Node], progress: Callable[[int, int], None] | None) -> Iterator[Node]:
    for i, node in enumerate(nodes):
        yield node
        if progress is not None:
            progress(i + 1, len(nodes))


def _walk(graph: Graph, progress: Callable[[int, int], None] | None = None
          ) -> tuple[list[NodeBound], dict[str, float], list[str]]:
    bounds: dict[str, float] = {graph.input_name: 1.0}
    rows: list[NodeBound] = []
    refusals: list[Refusal] = []
    warnings_: list[str] = []
    for node in _counted(graph.nodes, progress):
        in_bounds: list[float | None] = [bounds.get(i) if (i and graph.is_variable(i)) else None
                                         for i in node.inputs]
        n_out = len(node.outputs)
        # Downstream of a refused node (an input bound is inf): still run the rule, so that a node
        # that is unsupported in its own right is named too. When the refused node also left the
        # shapes unknown, the refusal may be only its echo: say so rather than hide it.
        tainted = [i for i, b in zip(node.inputs, in_bounds, strict=True) if b is not None and math.isinf(b)]
        if tainted:
            spec = None
            try:
                _check_data_path_types(graph, node)
                spec = lookup(node.domain, node.op_type, node.opset)
                if spec is None:
                    raise Refuse(_unknown_reason(node))
                with values_discarded():  # only a refusal matters here: skip the costly norms
                    spec.fn(RuleContext(node, graph, in_bounds))
            except Refuse as r:
                reason = r.reason
                if spec is not None and any(graph.shape_of(i) is None for i in tainted):
                    reason += " (perhaps only because a refused node upstream left its input shape unknown)"
                refusals.append(Refusal(node.domain, node.op_type, node.opset, node.name, reason))
            for o in node.outputs:
                bounds[o] = math.inf
            continue
        try:
            _check_data_path_types(graph, node)
            spec = lookup(node.domain, node.op_type, node.opset)
            if spec is None:
                raise Refuse(_unknown_reason(node))
            ctx = RuleContext(node, graph, in_bounds)
            result: Bound = spec.fn(ctx)
            outs = _composed_up(result.output_bounds(n_out), in_bounds, result.factor)
            if any(math.isnan(v) or v < 0 for v in outs):
                raise Refuse("the bound is not a number (are there NaN or Inf values among its constants?)")
            if any(math.isinf(v) for v in outs) and all(
                b is None or math.isfinite(b) for b in in_bounds
            ):
                raise Refuse("the bound is infinite (are there NaN or Inf values among its constants?)")
        except Refuse as r:
            refusals.append(Refusal(node.domain, node.op_type, node.opset, node.name, r.reason))
            for o in node.outputs:
                bounds[o] = math.inf
            continue
        for o, v in zip(node.outputs, outs, strict=True):
            if o:
                bounds[o] = v
        warnings_.extend(f"{node.name} ({node.op_type}): {w}" for w in [*result.warnings, *ctx.notes])
        rows.append(
            NodeBound(
                name=node.name,
                op_type=node.op_type,
                domain=node.domain,
                method=result.method,
                bound=float(result.factor) if result.factor is not None else float(outs[0]),
                cumulative=float(outs[0]),
                lower=result.lower,
                origin=list(node.origin),
                factor=float(result.factor) if result.factor is not None else None,
            )
        )
    if refusals:
        raise UnsupportedModelError(refusals)
    return rows, bounds, warnings_


def _check_data_path_types(graph: Graph, node: Node) -> None:
    """Integer or boolean tensors computed from the input are discontinuous in it: refuse."""
    for i in node.inputs:
        if not i or not graph.is_variable(i):
            continue
        t = graph.tensors[i]
        if t.elem_type is not None and t.elem_type not in FLOAT_TYPES and t.elem_type != 0:
            raise Refuse(
                f"input '{i}' is a non-float tensor computed from the model input "
                "(data-dependent indices or masks are discontinuous)"
            )


def _unknown_reason(node: Any) -> str:
    if node.has_subgraph:
        return "control flow with subgraphs (If/Loop/Scan) is not supported"
    if node.domain != "ai.onnx":
        return f"custom-domain op '{node.domain}' has no known Lipschitz bound"
    return "no Lipschitz rule for this op; see `lipgraph rules` for the supported ops"
