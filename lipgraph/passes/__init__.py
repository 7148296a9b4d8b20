"""Rewrites of the analysis graph that keep the function and tighten or simplify the bound.

Each pass is a function ``(graph) -> None`` in its own module. Order matters: the logits are
found first, structure is recognised before scales are folded into linear ops.
"""

from __future__ import annotations

from collections.abc import Callable

from lipgraph.graph import Graph

Pass = Callable[[Graph], None]


def default_passes(tightening: bool = True) -> list[Pass]:
    """The passes in the order they run. ``tightening=False`` leaves out the passes that only tighten
    a bound the generic rules already give soundly (scale folding, fused linear and residual structures):
    the float error walk runs on that graph, whose ops are the ones ONNX Runtime really evaluates."""
    from lipgraph.passes import logits

    passes: list[Pass] = [logits.cut_final_softmax]
    # Optional passes register themselves here as they land (pattern recognition, folding).
    for modname, fn in _OPTIONAL:
        if not tightening and (modname, fn) in _TIGHTENING:
            continue
        try:
            mod = __import__(f"lipgraph.passes.{modname}", fromlist=[fn])
        except ModuleNotFoundError:
            continue
        passes.append(getattr(mod, fn))
    return passes


# (module, function) in the order they run after the logits pass.
_OPTIONAL: list[tuple[str, str]] = [
    ("identity", "remove_identities"),
    ("sorting_variants", "rewrite_where_max_min"),
    ("groupsort", "recognise_sorting_units"),
    ("sorting_variants", "recognise_open_pair_sorts"),
    ("activation_patterns", "recognise_activations"),
    ("elementwise_patterns", "recognise_more_activations"),
    ("linear_regions", "fuse_linear_regions"),
    ("lppool", "recognise_l2_pooling"),
    # Before fold_scale, which would fold each 1/i of a series into its own copy of the weight.
    ("power_series", "recognise_power_series"),
    ("fold_scale", "fold_scales"),
    # After fold_scale (scalings already in Q or P are found by the rule); residual before plain.
    ("sandwiches", "recognise_residual_sandwiches"),
    ("sandwiches", "recognise_sandwiches"),
    # after BatchNorm folding, so that a Conv -> BN pair is first folded into one Conv
    ("circular_conv", "recognise_circular_convs"),
    # after the circular convs exist, before linear_maps would merge one layer's M with the next one's N
    ("conv_sandwiches", "recognise_circular_sandwiches"),
    # last: the structured passes above certify more than the composed matrix of their region would
    ("linear_maps", "compose_linear_maps"),
]


# Passes whose unfused input the generic rules bound soundly (only more loosely): they change how tight
# the bound is, never whether the model is analysable.
_TIGHTENING: set[tuple[str, str]] = {
    ("power_series", "recognise_power_series"),
    ("fold_scale", "fold_scales"),
    ("sandwiches", "recognise_residual_sandwiches"),
    ("sandwiches", "recognise_sandwiches"),
    ("circular_conv", "recognise_circular_convs"),
    ("conv_sandwiches", "recognise_circular_sandwiches"),
    ("linear_maps", "compose_linear_maps"),
    ("linear_regions", "fuse_linear_regions"),
}


def run_passes(graph: Graph, passes: list[Pass] | None = None) -> None:
    for p in passes if passes is not None else default_passes():
        p(graph)
        graph.prune_to_output()
