"""Shared bits of the CI-gate tests: the bundled sample model and data (no torch needed), a runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipgraph.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
MODEL = SAMPLES / "groupsort.onnx"
DATA = SAMPLES / "digits_test.npz"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def certify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run(capsys, "certify", str(MODEL), "--data", str(DATA), *args)
