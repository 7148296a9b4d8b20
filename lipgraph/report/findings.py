"""Findings: what CI formats (SARIF, GitHub annotations, GitLab code quality) report.

A finding is one failed gate or one node without a sound bound, located at the model file. These
formats carry problems, not the whole report, so they are also written when the model is refused
(see :func:`refusal_report`): a pull request then shows the refused nodes where people look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lipgraph.errors import Refusal
from lipgraph.report.certify import gate_detail

# Rule ids: the gate kinds of lipgraph.gates, plus refused nodes.
RULES: dict[str, str] = {
    "min-certified-accuracy": "Certified accuracy at a radius is below the required minimum.",
    "min-clean-accuracy": "Clean accuracy is below the required minimum.",
    "max-lipschitz": "The certified Lipschitz bound is above the allowed maximum.",
    "max-drop": "Certified accuracy dropped against the baseline report by more than allowed.",
    "unsupported-node": "A node of the model has no sound Lipschitz bound, so nothing can be certified.",
}


@dataclass(frozen=True)
class Finding:
    rule: str  # a key of RULES
    name: str  # gate name or node name (stable across runs: used for fingerprints)
    message: str
    node: str | None = None  # the node it is about, when it is about one


def findings(report: dict[str, Any]) -> list[Finding]:
    """Failed gates and refused nodes of a report dict (``Certificate.to_json()`` or a refusal)."""
    out = [
        Finding(g["kind"], g["name"], f"gate {g['name']} failed: {gate_detail(g)}")
        for g in report.get("gates", [])
        if not g["passed"]
    ]
    out += [
        Finding(
            "unsupported-node",
            r["node"],
            f"{r['op']} node '{r['node']}' has no sound Lipschitz bound: {r['reason']}",
            node=r["node"],
        )
        for r in report.get("refusals", [])
    ]
    return out


def model_path(report: dict[str, Any]) -> str:
    return str(report.get("meta", {}).get("model") or "model.onnx")


def refusal_report(model: str, refusals: list[Refusal]) -> dict[str, Any]:
    """A report dict for a model lipgraph refused (exit 2): only what the CI formats need."""
    from lipgraph.analyze import versions

    return {
        "passed": False,
        "gates": [],
        "warnings": [],
        "refusals": [
            {"node": r.node_name, "op": f"{r.domain}:{r.op_type}@{r.opset}", "reason": r.reason} for r in refusals
        ],
        "meta": {"model": model, "versions": versions()},
    }
