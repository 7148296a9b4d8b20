"""The analysis graph: ONNX nodes in topological order, every tensor variable or constant.

A tensor is *variable* when it depends on the values of the certified input; otherwise it is
*constant* and, where possible, folded to a value (:mod:`lipgraph.graph_build` builds the graph
from an ONNX model). Passes rewrite it through :meth:`Graph.replace`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import onnx

from lipgraph.errors import ModelLoadError

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


@dataclass
class Node:
    name: str
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    origin: list[str] = field(default_factory=list)  # original node names a fused node stands for
    has_subgraph: bool = False
    # A bound-only rewrite (fold_scale across a sign-changing scale) left this node computing other
    # values than the model: only its Lipschitz bound carries over, so structural passes must not read
    # its semantics (e.g. its slope range) as the model's.
    bound_only: bool = False
    # A pass computed this node's constant weight (or scale) in float64: every stored entry W'_ij is within
    # rho |W'_ij| of the exact value (lipgraph/norms/weight_rounding.py). 0: the model's own constants.
    # Rules of ops that read such a weight add ``rho || |W'| ||_2``; passes that copy or fuse the node
    # carry it over.
    rho: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.domain}:{self.op_type}@{self.opset}"


@dataclass
class Tensor:
    name: str
    shape: tuple[int | None, ...] | None = None
    elem_type: int | None = None
    value: np.ndarray | None = None
    variable: bool = False


class Graph:
    """Nodes in topological order plus a table of tensors. Passes edit it in place."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.tensors: dict[str, Tensor] = {}
        self.input_name: str = ""
        self.output_name: str = ""
        self.opsets: dict[str, int] = {}
        self.warnings: list[str] = []
        self.model: onnx.ModelProto | None = None
        self._name_counter = 0

    # ------------------------------------------------------------------ queries
    def tensor(self, name: str) -> Tensor:
        t = self.tensors.get(name)
        if t is None:
            t = self.tensors[name] = Tensor(name)
        return t

    def shape_of(self, name: str) -> tuple[int | None, ...] | None:
        t = self.tensors.get(name)
        if t is None:
            return None
        if t.value is not None:
            return tuple(int(d) for d in t.value.shape)
        return t.shape

    def is_variable(self, name: str) -> bool:
        t = self.tensors.get(name)
        return bool(t and t.variable)

    def producer(self, name: str) -> Node | None:
        for n in self.nodes:
            if name in n.outputs:
                return n
        return None

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def is_graph_output(self, name: str) -> bool:
        return name == self.output_name

    def fresh_name(self, stem: str) -> str:
        names = {n.name for n in self.nodes} | set(self.tensors)
        while True:
            self._name_counter += 1
            cand = f"{stem}__lg{self._name_counter}"
            if cand not in names:
                return cand

    # ------------------------------------------------------------------ edits
    def replace(self, old: Iterable[Node], new: Iterable[Node]) -> None:
        """Remove ``old`` nodes, add ``new`` ones, and restore topological order."""
        old_ids = {id(n) for n in old}
        self.nodes = [n for n in self.nodes if id(n) not in old_ids] + list(new)
        self.sort()

    def sort(self) -> None:
        """Topological order (stable: ties keep the file's order). Raises on cycles or dangling inputs."""
        available = {name for name, t in self.tensors.items() if self.producer_free(t)}
        available.add("")
        produced_by: dict[str, int] = {}
        for idx, n in enumerate(self.nodes):
            for o in n.outputs:
                if o:
                    produced_by[o] = idx
        g = nx.DiGraph()
        g.add_nodes_from(range(len(self.nodes)))
        for idx, n in enumerate(self.nodes):
            for i in n.inputs:
                if i in produced_by:
                    g.add_edge(produced_by[i], idx)
                elif i not in available and not n.has_subgraph:
                    raise ModelLoadError(
                        f"node '{n.name}' ({n.op_type}) reads tensor '{i}' that no node, input or "
                        "initializer provides; the model is malformed"
                    )
        try:
            order = list(nx.lexicographical_topological_sort(g, key=lambda k: k))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(g)
            names = " -> ".join(self.nodes[a].name for a, _ in cycle)
            raise ModelLoadError(f"the graph has a cycle ({names}); lipgraph needs a DAG") from None
        self.nodes = [self.nodes[k] for k in order]

    def producer_free(self, t: Tensor) -> bool:
        """A tensor that needs no producing node: the input, an initializer or any constant.

        Constant nodes are dropped after folding, so a constant whose value could not be computed
        (it depends on a symbolic dimension, say) has no producer either.
        """
        return t.value is not None or t.name == self.input_name or not t.variable

    def prune_to_output(self) -> None:
        """Drop nodes that do not contribute to the logits (label outputs, side branches)."""
        needed = {self.output_name}
        keep: list[Node] = []
        for n in reversed(self.nodes):
            if any(o in needed for o in n.outputs):
                keep.append(n)
                needed.update(i for i in n.inputs if i)
        self.nodes = list(reversed(keep))
