"""The sample-model table in sample_models/README.md is what `lipgraph certify` gives for those files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from lipgraph.cli import main
from lipgraph.numbers import percent_down
from lipgraph.report.tables import fmt_lower, fmt_upper

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _table_rows() -> list[list[str]]:
    rows = []
    for line in (SAMPLES / "README.md").read_text().splitlines():
        if line.startswith("| `") and ".onnx`" in line:
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_table_lists_every_sample_model() -> None:
    listed = {re.sub(r"`", "", r[0]) for r in _table_rows()}
    on_disk = {p.name for p in SAMPLES.glob("*.onnx")}
    assert listed == on_disk and len(on_disk) >= 4


@pytest.mark.parametrize("row", _table_rows(), ids=lambda r: r[0].strip("`"))
def test_table_row_matches_certify(row: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = SAMPLES / row[0].strip("`")
    out = tmp_path / "r.json"
    with threadpool_limits(1):  # one BLAS thread, as the `lipgraph` command itself runs
        rc = main(["certify", str(model), "--data", str(SAMPLES / "digits_test.npz"), "--eps", "0.5",
                   "--format", "json", "-o", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    clean, cert, median, bound = row[2], row[3], row[4], row[5]
    assert clean == percent_down(rep['clean_accuracy'])
    if rep["meta"]["pair_bounds"].get("used"):
        # Per-pair bounds come from an optimiser pinned to one BLAS thread, but its path still follows the BLAS
        # build's summation order: the table holds one machine's figures, which others reproduce to a few samples.
        n = rep["samples"]
        assert abs(float(cert.rstrip("%")) / 100 - rep["certified_accuracy"]["0.5"]) <= 3 / n + 1e-4
        assert float(median) == pytest.approx(rep["median_radius"], rel=0.02)
    else:
        assert cert == percent_down(rep['certified_accuracy']['0.5'])
        assert median == fmt_lower(rep["median_radius"])
    assert bound == fmt_upper(rep["lipschitz_bound"], 8)
