"""Rendering of `lipgraph certify`: text, json, junit, markdown (all views of Certificate.to_json())."""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from lipgraph.numbers import percent_down
from lipgraph.report.tables import fmt_lower, fmt_upper, markdown_table, text_table


def _pct(x: float | None) -> str:
    return percent_down(x)  # an accuracy is rounded down, so a printed 60.17% is never above the truth


def _summary_rows(d: dict[str, Any]) -> list[list[str]]:
    m = d["meta"]
    rows = [
        ["model", f"{m.get('model')} (sha256 {str(m.get('model_sha256', ''))[:12]}, opset {m.get('opset')})"],
        ["samples", str(d["samples"])],
        ["Lipschitz bound (L2)", fmt_upper(d["lipschitz_bound"], 8)],
        ["clean accuracy", _pct(d["clean_accuracy"]) if d["clean_accuracy"] is not None else "n/a (no labels)"],
        ["median radius", fmt_lower(d["median_radius"])],
        ["mean radius", fmt_lower(d["mean_radius"])],
        ["radius method", d["radius_method"] + _pair_note(m.get("pair_bounds"))],
        *_local_row(m.get("local_bounds")),
        ["provider", str(m.get("provider"))],
        ["config", str(m.get("config") or "none (no [tool.lipgraph] found)")],
        ["time", f"bound {m.get('time_bound_s', 0):.3f}s (beside inference), inference "
                 f"{m.get('time_inference_s', 0):.3f}s, total {m.get('time_total_s', 0):.3f}s"],
    ]
    return rows


def _pair_note(pb: Any) -> str:
    """Say when per-pair network bounds changed the radii (lipgraph.pairs), so it is never silent."""
    if not isinstance(pb, dict) or not pb.get("used"):
        return ""
    by = pb.get("pairs_by_method") or {}
    tight = sum(v for k, v in by.items() if k != "last-layer")
    return f" (network bounds for {tight} of {pb.get('pairs_total')} class pairs, --tight-pairs {pb.get('mode')})"


def _local_row(lb: Any) -> list[list[str]]:
    """One line on the per-sample local bounds (lipgraph.local_bounds) when they ran."""
    if not isinstance(lb, dict) or not lb.get("used"):
        return []
    method = str(lb.get("method", "")).split(":")[0]
    bis = lb.get("bisection") or {}
    between = f", {bis['samples_raised']} between grid eps by bisection" if bis.get("samples_raised") else ""
    return [["local bounds", f"{lb.get('samples_from_local', 0)} radii raised by {method}{between} "
             f"(--local-bounds {lb.get('mode')}, {lb.get('time_s', 0):.2f}s)"]]


def _eps_rows(d: dict[str, Any]) -> list[list[str]]:
    base = (d.get("baseline") or {}).get("certified_accuracy", {})
    rows = []
    for k, v in sorted(d["certified_accuracy"].items(), key=lambda kv: float(kv[0])):
        row = [k, _pct(v)]
        if base:
            b = next((bv for bk, bv in base.items() if float(bk) == float(k)), None)
            row.append(_pct(b) if b is not None else "-")
        rows.append(row)
    return rows


def gate_detail(g: dict[str, Any]) -> str:
    """A gate's message, and for a failed one what to do about it (``hint``, lipgraph.gates.HINTS)."""
    return f"{g['message']}; to fix: {g['hint']}" if g.get("hint") and not g["passed"] else g["message"]


def _gate_rows(d: dict[str, Any]) -> list[list[str]]:
    return [["PASS" if g["passed"] else "FAIL", g["name"], gate_detail(g)] for g in d["gates"]]


def _verdict(d: dict[str, Any]) -> str:
    if not d["gates"]:
        return "no gates configured"
    failed = sum(not g["passed"] for g in d["gates"])
    return "all gates passed" if not failed else f"{failed} of {len(d['gates'])} gates FAILED"


def render_text(cert: Any) -> str:
    d = cert.to_json()
    eps_headers = ["eps", "certified accuracy"] + (["baseline"] if d.get("baseline") else [])
    out = [
        text_table(["", ""], _summary_rows(d)).split("\n", 2)[2],
        text_table(eps_headers, _eps_rows(d), [True] * len(eps_headers)),
    ]
    if d["gates"]:
        out.append(text_table(["result", "gate", "detail"], _gate_rows(d)))
    out.append(f"verdict: {_verdict(d)}")
    out.extend(f"warning: {w}" for w in d["warnings"])
    return "\n".join(line.rstrip() for line in "\n".join(out).splitlines()) + "\n"


def render_json(cert: Any) -> str:
    return json.dumps(cert.to_json(), indent=2, allow_nan=True) + "\n"


def render_markdown(cert: Any) -> str:
    d = cert.to_json()
    mark = "" if not d["gates"] else (" ✅" if d["passed"] else " ❌")
    eps_headers = ["eps", "certified accuracy"] + (["baseline"] if d.get("baseline") else [])
    out = [
        f"## lipgraph certify{mark}",
        "",
        f"**{_verdict(d)}**",
        "",
        markdown_table(["", ""], [[f"**{a}**", b] for a, b in _summary_rows(d)]),
        markdown_table(eps_headers, _eps_rows(d), [True] * len(eps_headers)),
    ]
    if d["gates"]:
        out.append(markdown_table(["result", "gate", "detail"], _gate_rows(d)))
    out.extend(f"> warning: {w}" for w in d["warnings"])
    return "\n".join(out) + "\n"


def render_junit(cert: Any) -> str:
    """JUnit XML: one testcase per gate, a <failure> for each missed gate (one test when no gates)."""
    d = cert.to_json()
    gates = d["gates"] or [{
        "name": "certify", "passed": True,
        "message": f"no gates configured; certified accuracy {json.dumps(d['certified_accuracy'])}",
    }]
    failures = sum(not g["passed"] for g in gates)
    t = float(d["meta"].get("time_total_s", 0.0))
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="lipgraph" tests="{len(gates)}" failures="{failures}" errors="0" time="{t:.3f}">',
        f'  <testsuite name={quoteattr("lipgraph certify " + str(d["meta"].get("model")))} '
        f'tests="{len(gates)}" failures="{failures}" errors="0" skipped="0" time="{t:.3f}">',
    ]
    for g in gates:
        lines.append(f'    <testcase classname="lipgraph.certify" name={quoteattr(g["name"])} time="0">')
        if g["passed"]:
            lines.append(f"      <system-out>{escape(g['message'])}</system-out>")
        else:
            lines.append(f'      <failure message={quoteattr(gate_detail(g))} type="GateFailed">'
                         f"{escape(gate_detail(g))}</failure>")
        lines.append("    </testcase>")
    lines += ["  </testsuite>", "</testsuites>"]
    return "\n".join(lines) + "\n"


RENDERERS = {"text": render_text, "json": render_json, "junit": render_junit, "markdown": render_markdown}
