"""Rewrites of the analysis graph that keep the function and tighten or simplify the bound.

Each pass is a function ``(graph) -> None`` in its own module. Order matters: the logits are
found first, structure is recognised before scales are folded into linear ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lipgraph.graph import Graph

Pass = Callable[[Graph], None]


@dataclass(frozen=True)
class PassEntry:
    """One pass of the pipeline: where it lives, and whether it only tightens.

    ``tightening``: the generic rules bound the pass's unfused input soundly (only more loosely), so the
    pass changes how tight the bound is, never whether the model is analysable; the float error walk
    leaves these out and runs on the ops ONNX Runtime really evaluates."""

    module: str
    function: str
    tightening: bool = False


def default_passes(tightening: bool = True) -> list[Pass]:
    """The passes in the order they run. ``tightening=False`` leaves out the passes that only tighten
    a bound the generic rules already give soundly (scale folding, fused linear and residual structures)."""
    import importlib

    from lipgraph.passes import logits

    passes: list[Pass] = [logits.cut_final_softmax]
    for entry in PASS_ORDER:
        if tightening or not entry.tightening:
            # A missing module is an install error, never a pass silently left out of the analysis.
            passes.append(getattr(importlib.import_module(f"lipgraph.passes.{entry.module}"), entry.function))
    return passes


# In the order they run after the logits pass.
PASS_ORDER: list[PassEntry] = [
    PassEntry("identity", "remove_identities"),
    PassEntry("sorting_variants", "rewrite_where_max_min"),
    PassEntry("groupsort", "recognise_sorting_units"),
    PassEntry("sorting_variants", "recognise_open_pair_sorts"),
    PassEntry("activation_patterns", "recognise_activations"),
    PassEntry("elementwise_patterns", "recognise_more_activations"),
    PassEntry("linear_regions", "fuse_linear_regions", tightening=True),
    PassEntry("lppool", "recognise_l2_pooling"),
    # Before fold_scale, which would fold each 1/i of a series into its own copy of the weight.
    PassEntry("power_series", "recognise_power_series", tightening=True),
    PassEntry("fold_scale", "fold_scales", tightening=True),
    # After fold_scale (scalings already in Q or P are found by the rule); residual before plain.
    PassEntry("sandwiches", "recognise_residual_sandwiches", tightening=True),
    PassEntry("sandwiches", "recognise_sandwiches", tightening=True),
    # after BatchNorm folding, so that a Conv -> BN pair is first folded into one Conv
    PassEntry("circular_conv", "recognise_circular_convs", tightening=True),
    # after the circular convs exist, before linear_maps would merge one layer's M with the next one's N
    PassEntry("conv_sandwiches", "recognise_circular_sandwiches", tightening=True),
    # last: the structured passes above certify more than the composed matrix of their region would
    PassEntry("linear_maps", "compose_linear_maps", tightening=True),
]


def run_passes(graph: Graph, passes: list[Pass] | None = None) -> None:
    for p in passes if passes is not None else default_passes():
        p(graph)
        graph.prune_to_output()
