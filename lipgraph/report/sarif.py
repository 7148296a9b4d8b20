"""SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format), the format GitHub code scanning reads.

One result per failed gate and per refused node, each located at the model file. GitHub rejects a
result without a location and a location without a line region, so each carries ``startLine: 1``
(an ONNX file has no lines; the model file is what a reviewer should open). The node a result is
about is its logical location. ``partialFingerprints`` keep a result's identity across runs, so
code scanning tracks a failing gate as one alert rather than a new one per commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lipgraph.report.findings import RULES, findings, model_path

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def _uri(path: str) -> str:
    p = Path(path)
    return p.resolve().as_uri() if p.is_absolute() else p.as_posix()


def render_sarif(report: Any) -> str:
    """``report``: a Certificate or a report dict (``Certificate.to_json()`` or a refusal report)."""
    d = report if isinstance(report, dict) else report.to_json()
    meta = d.get("meta", {})
    uri = _uri(model_path(d))
    rule_ids = list(RULES)
    results = []
    for f in findings(d):
        location: dict[str, Any] = {
            "physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": 1}},
        }
        if f.node is not None:
            location["logicalLocations"] = [{"name": f.node, "kind": "object"}]
        key = hashlib.sha256(f"{f.rule}\0{f.name}".encode()).hexdigest()[:32]
        results.append(
            {
                "ruleId": f.rule,
                "ruleIndex": rule_ids.index(f.rule),
                "level": "error",
                "message": {"text": f.message},
                "locations": [location],
                "partialFingerprints": {"lipgraphFinding/v1": key},
            }
        )
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "lipgraph",
                "version": str(meta.get("versions", {}).get("lipgraph", "")) or "unknown",
                "rules": [
                    {
                        "id": rid,
                        "name": rid,
                        "shortDescription": {"text": text},
                        "defaultConfiguration": {"level": "error"},
                    }
                    for rid, text in RULES.items()
                ],
            }
        },
        "results": results,
        "artifacts": [{"location": {"uri": uri}}],
        "invocations": [{"executionSuccessful": not d.get("refusals")}],
    }
    return json.dumps({"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"
