"""Rewrites of the analysis graph that keep the function and tighten or simplify the bound.

Each pass is a function ``(graph) -> None`` in its own module. Order matters: the logits are
found first, structure is recognised before scales are folded into linear ops.
"""

from __future__ import annotations

from collections.abc import Callable

from lipgraph.graph import Graph

Pass = Callable[[Graph], None]


def default_passes() -> list[Pass]:
    from lipgraph.passes import logits

    passes: list[Pass] = [logits.cut_final_softmax]
    # Optional passes register themselves here as they land (pattern recognition, folding).
    for modname, fn in _OPTIONAL:
        try:
            mod = __import__(f"lipgraph.passes.{modname}", fromlist=[fn])
        except ModuleNotFoundError:
            continue
        passes.append(getattr(mod, fn))
    return passes


# (module, function) in the order they run after the logits pass.
_OPTIONAL: list[tuple[str, str]] = [
    ("identity", "remove_identities"),
    ("groupsort", "recognise_sorting_units"),
    ("activation_patterns", "recognise_activations"),
    ("elementwise_patterns", "recognise_more_activations"),
    ("linear_regions", "fuse_linear_regions"),
    ("lppool", "recognise_l2_pooling"),
    ("fold_scale", "fold_scales"),
]


def run_passes(graph: Graph, passes: list[Pass] | None = None) -> None:
    for p in passes if passes is not None else default_passes():
        p(graph)
        graph.prune_to_output()
