"""Adversarial review of ``certify --shard K/N`` + ``lipgraph merge`` with the local radii between grid points.

Parts of uneven sizes (blocks of 7 samples, so batches of a few rows arise) must merge into the single run bit for
bit, every count included; parts certified with other settings (``--radius-steps``, ``--local-bounds``) must be
refused instead of merged into a report that describes the first part only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipgraph.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
MODEL = str(SAMPLES / "plain.onnx")
COMMON = ["--data", str(SAMPLES / "digits_test.npz"), "--limit", "60", "--eps", "0.1", "--eps", "0.3"]
COMMON += ["--batch-size", "7", "--tight-pairs", "off", "-q"]


def _parts(tmp_path: Path, count: int, extra: list[list[str]]) -> list[str]:
    out = []
    for k in range(1, count + 1):
        part = tmp_path / f"part{k}.json"
        assert main(["certify", MODEL, *COMMON, *extra[k - 1], "--shard", f"{k}/{count}", "-o", str(part)]) == 0
        out.append(str(part))
    return out


def test_uneven_shards_merge_into_the_single_run_bit_for_bit(tmp_path: Path, capsys) -> None:
    single = tmp_path / "single.json"
    assert main(["certify", MODEL, *COMMON, "--per-sample", "-o", f"json={single}"]) == 0
    merged = tmp_path / "merged.json"
    parts = _parts(tmp_path, 4, [[]] * 4)
    assert main(["merge", *parts, "--format", "json", "-o", str(merged), "--per-sample"]) == 0, capsys.readouterr()
    a, b = json.loads(single.read_text()), json.loads(merged.read_text())
    for key in ("certified_accuracy", "median_radius", "mean_radius", "per_sample"):
        assert a[key] == b[key], key
    la, lb = a["meta"]["local_bounds"], b["meta"]["local_bounds"]
    assert la["used"] and la["bisection"]["samples_raised"] > 0
    for key in ("samples_checked", "samples_improved", "samples_refuted_by_attack", "samples_from_local", "bisection"):
        assert la[key] == lb[key], key


@pytest.mark.parametrize(
    "extra",
    [
        [["--radius-steps", "2"], ["--radius-steps", "0"]],
        [["--local-bounds", "auto"], ["--local-bounds", "off"]],
    ],
)
def test_parts_with_other_settings_are_not_merged(tmp_path: Path, capsys, extra: list[list[str]]) -> None:
    parts = _parts(tmp_path, 2, extra)
    capsys.readouterr()
    rc = main(["merge", *parts, "--format", "json", "-o", str(tmp_path / "m.json")])
    assert rc != 0
    assert "other settings" in capsys.readouterr().err
