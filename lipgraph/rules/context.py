"""What a rule sees (:class:`RuleContext`) and what it returns (:class:`Bound`).

Kept apart from the registry so that helpers rules share (``rules/shapes.py``) can name the
context without importing the registry that imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lipgraph.graph import Graph, Node


@dataclass
class Bound:
    """What a rule returns.

    ``outputs``: the Lipschitz bound of each output tensor w.r.t. the certified input (one value
    used for every output when a single float is given). ``factor``: the op's own constant, shown
    in the per-node table (for a unary op, ``outputs == factor * L_in``). ``lower``: a lower
    estimate of the op's own norm, for the slack report, never used as a bound.
    """

    outputs: float | Sequence[float]
    method: str
    factor: float | None = None
    lower: float | None = None
    warnings: list[str] = field(default_factory=list)

    def output_bounds(self, n: int) -> list[float]:
        if isinstance(self.outputs, int | float | np.floating):
            return [float(self.outputs)] * n
        vals = [float(v) for v in self.outputs]
        if len(vals) != n:
            raise ValueError(f"rule returned {len(vals)} output bounds for {n} outputs")
        return vals


@dataclass
class RuleContext:
    """Everything a rule may look at. Rules do not touch the graph otherwise."""

    node: Node
    graph: Graph
    input_bounds: list[float | None]  # None: constant input (L = 0); '' inputs are None too
    # Assumptions a rule had to make, reported with the node as warnings (e.g. about symbolic dims).
    notes: list[str] = field(default_factory=list)

    @property
    def opset(self) -> int:
        return self.node.opset

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    def is_variable(self, i: int) -> bool:
        return i < len(self.input_bounds) and self.input_bounds[i] is not None

    def variable_indices(self) -> list[int]:
        return [i for i, b in enumerate(self.input_bounds) if b is not None]

    def const(self, i: int) -> np.ndarray | None:
        """The folded value of input ``i`` (None when absent, variable or unknown)."""
        if i >= len(self.node.inputs) or not self.node.inputs[i]:
            return None
        t = self.graph.tensors.get(self.node.inputs[i])
        return None if t is None or t.variable else t.value

    def has_input(self, i: int) -> bool:
        return i < len(self.node.inputs) and bool(self.node.inputs[i])

    def in_shape(self, i: int = 0) -> tuple[int | None, ...] | None:
        return self.graph.shape_of(self.node.inputs[i]) if self.has_input(i) else None

    def out_shape(self, i: int = 0) -> tuple[int | None, ...] | None:
        return self.graph.shape_of(self.node.outputs[i]) if i < len(self.node.outputs) else None

    def single_variable_input(self) -> tuple[int, float]:
        """The index and bound of the one variable input; refuses otherwise."""
        from lipgraph.errors import Refuse

        idx = self.variable_indices()
        if len(idx) != 1:
            raise Refuse(f"expected exactly one input that depends on the model input, got {len(idx)}")
        b = self.input_bounds[idx[0]]
        assert b is not None
        return idx[0], b
