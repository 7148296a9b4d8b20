"""Operator domains: ONNX's default one and lipgraph's own, for the nodes its passes fuse.

A leaf module, so that the graph and the rule registry can both name domains without importing
each other.
"""

from __future__ import annotations

DEFAULT_DOMAIN = "ai.onnx"
LIPGRAPH_DOMAIN = "lipgraph"  # fused nodes made by the passes (GroupSort, folded affine ops, ...)


def normalize_domain(domain: str | None) -> str:
    """ONNX writes the default domain as "" or "ai.onnx"; lipgraph always says "ai.onnx"."""
    return DEFAULT_DOMAIN if domain in (None, "", "ai.onnx") else domain
