"""HTML report details: the affine tail as a list of ops (not a Python repr), baseline gates drawn and
explained apart from user gates, and gate numbers in the units of the rest of the report."""

from __future__ import annotations

import json

from tests.ci.helpers import certify


def test_html_tail_baseline_gates_and_percentages(capsys, tmp_path) -> None:
    base = tmp_path / "base.json"
    rc, _, _ = certify(capsys, "--no-config", "--eps", "0.25", "--eps", "0.5", "-o", f"json={base}")
    assert rc == 0
    better = json.loads(base.read_text())
    better["certified_accuracy"]["0.5"] = 0.9  # the old run was better at 0.5: that baseline gate fails
    base.write_text(json.dumps(better))
    page = tmp_path / "r.html"
    rc, _, err = certify(
        capsys,
        "--no-config",
        "--baseline",
        str(base),
        "--max-drop",
        "0.01",
        "--min-certified-accuracy",
        "0.5=0.6",
        "-o",
        f"html={page}",
    )
    assert rc == 1, err
    html = page.read_text()
    assert "affine tail: Gemm:node_linear_2," in html and "['" not in html
    assert "baseline gate passed (baseline − max drop)" in html  # at 0.25
    assert "baseline gate failed (baseline − max drop)" in html  # at 0.5
    assert "gate passed (minimum allowed)" in html  # the user's gate keeps its own legend entry
    # gate table: accuracies as percentages (rounded down), thresholds as given, drops in points
    assert '<td class="n" data-value="0.6016713091922006">60.16%</td><td class="n" data-value="0.6">60%</td>' in html
    assert " pp</td>" in html and "0.601671</td>" not in html
    rep = json.loads(base.read_text())
    from lipgraph.report.tables import fmt_lower

    median, mean = fmt_lower(rep["median_radius"], 4), fmt_lower(rep["mean_radius"], 4)
    assert f"{median} / {mean}" in html and f"median radius {median}," in html  # radii rounded down
