"""Rendering of `lipgraph bound`: text, json, markdown."""

from __future__ import annotations

import json

from lipgraph.analyze import Analysis
from lipgraph.report.tables import fmt_upper, markdown_table, text_table

_HEADERS = ["node", "op", "method", "node bound", "cumulative"]
_RIGHT = [False, False, False, True, True]


def _rows(analysis: Analysis) -> list[list[str]]:
    return [
        [n.name, n.op_type, n.method, fmt_upper(n.bound), fmt_upper(n.cumulative)]
        for n in analysis.nodes
    ]


def render_text(analysis: Analysis) -> str:
    m = analysis.meta
    out = [
        f"model: {m['model']}  (sha256 {m['model_sha256'][:12]}, opset {m['opset']})",
        f"input: {m['input']} {m['input_shape']}  ->  logits: {m['logits']}",
        "",
        text_table(_HEADERS, _rows(analysis), _RIGHT),
        f"Lipschitz bound (L2, input -> logits): {fmt_upper(analysis.bound, 8)}",
    ]
    if analysis.warnings:
        out.append("")
        out.extend(f"warning: {w}" for w in analysis.warnings)
    return "\n".join(out) + "\n"


def render_json(analysis: Analysis) -> str:
    return json.dumps(analysis.to_json(), indent=2, allow_nan=True) + "\n"


def render_markdown(analysis: Analysis) -> str:
    m = analysis.meta
    out = [
        "## lipgraph bound",
        "",
        f"**Lipschitz bound (L2, input -> logits): {fmt_upper(analysis.bound, 8)}**",
        "",
        f"Model `{m['model']}` (sha256 `{m['model_sha256'][:12]}`, opset {m['opset']}); "
        f"input `{m['input']}`, logits `{m['logits']}`.",
        "",
        markdown_table(_HEADERS, _rows(analysis), _RIGHT),
    ]
    if analysis.warnings:
        out.extend(f"> warning: {w}" for w in analysis.warnings)
    return "\n".join(out) + "\n"


RENDERERS = {"text": render_text, "json": render_json, "markdown": render_markdown}
