"""CI annotations: GitHub workflow commands and GitLab code-quality JSON.

* ``github``: one ``::error file=MODEL,title=...::message`` line per failed gate or refused node, a
  ``::warning`` per report warning and a ``::notice`` with the verdict. GitHub reads these from a
  step's standard output (``--format github``) and shows them on the run and the pull request.
  Values are escaped as the runner expects (``%``, CR, LF; in properties also ``:`` and ``,``).
* ``gitlab``: the code-quality report (a JSON list of issues with ``description``, ``check_name``,
  ``fingerprint``, ``severity``, ``location.path`` and ``location.lines.begin``) that a job
  publishes with ``artifacts: reports: codequality:``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lipgraph.report.findings import findings, model_path


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _as_dict(report: Any) -> dict[str, Any]:
    return report if isinstance(report, dict) else report.to_json()


def render_github(report: Any) -> str:
    d = _as_dict(report)
    path = _escape_property(model_path(d))
    lines = [
        f"::error file={path},line=1,title={_escape_property('lipgraph ' + f.rule)}::{_escape_data(f.message)}"
        for f in findings(d)
    ]
    lines += [f"::warning file={path},line=1,title=lipgraph warning::{_escape_data(w)}" for w in d.get("warnings", [])]
    gates = d.get("gates", [])
    failed = sum(not g["passed"] for g in gates)
    if d.get("refusals"):
        verdict = f"{len(d['refusals'])} node(s) without a sound Lipschitz bound; nothing certified"
    elif not gates:
        verdict = "no gates configured"
    else:
        verdict = f"FAIL {failed} of {len(gates)} gates" if failed else f"PASS {len(gates)} of {len(gates)} gates"
    lines.append(f"::notice file={path},title=lipgraph certify::{_escape_data(verdict)}")
    return "\n".join(lines) + "\n"


def render_gitlab(report: Any) -> str:
    d = _as_dict(report)
    path = model_path(d)
    issues = [
        {
            "type": "issue",
            "check_name": f"lipgraph/{f.rule}",
            "description": f.message,
            "categories": ["Bug Risk"],
            "severity": "major",
            "fingerprint": hashlib.sha256(f"{path}\0{f.rule}\0{f.name}".encode()).hexdigest(),
            "location": {"path": path, "lines": {"begin": 1}},
        }
        for f in findings(d)
    ]
    return json.dumps(issues, indent=2) + "\n"
