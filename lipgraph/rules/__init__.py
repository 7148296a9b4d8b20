"""Bound rules, one module per op family. :func:`load_rules` registers them all."""

from __future__ import annotations

import importlib

FAMILIES = (
    "linear",
    "conv",
    "pooling",
    "activations",
    "normalization",
    "structural",
    "arithmetic",
    "groupsort",
    "resize",
    "families",
    "indexing",
    "fused_activations",
    "linear_region",
)

_loaded = False


def load_rules() -> None:
    """Import every family module once (each registers its rules with the decorator)."""
    global _loaded
    if _loaded:
        return
    for family in FAMILIES:
        try:
            importlib.import_module(f"lipgraph.rules.{family}")
        except ModuleNotFoundError as exc:  # a family not written yet
            if exc.name != f"lipgraph.rules.{family}":
                raise
    _loaded = True
