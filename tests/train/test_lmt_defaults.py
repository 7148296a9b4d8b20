"""The plain CLI's LMT defaults certify >= 45% at eps 0.5 on the bundled digits (issue 14), checked by
`lipgraph certify` on the exported file (a run of ~15 s training + certify)."""

import json

import pytest
from click.testing import CliRunner


@pytest.mark.slow
def test_lmt_cli_defaults_certify_45_percent_at_0_5(tmp_path):
    from lipgraph.cli import cli

    out = tmp_path / "lmt.onnx"
    res = CliRunner().invoke(cli, ["train", "--method", "lmt", "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report_path = tmp_path / "r.json"
    res = CliRunner().invoke(
        cli,
        [
            "certify",
            str(out),
            "--data",
            str(tmp_path / "lmt.test.npz"),
            "--eps",
            "0.5",
            "-o",
            f"json={report_path}",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(report_path.read_text())
    assert report["certified_accuracy"]["0.5"] >= 0.45, report["certified_accuracy"]
