"""The trainer's comparison of its own estimate with the analyzer's bound."""

from __future__ import annotations

from pathlib import Path

from lipgraph.analyze import analyze
from lipgraph.train.export import check_with_analyzer

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def test_a_bound_below_the_layer_product_is_not_reported_as_a_bug() -> None:
    # whole-block bounds (sandwiches, composed linear maps) may be far below a product of layer norms
    path = str(SAMPLES / "plain.onnx")
    bound = analyze(path).bound
    got, warns = check_with_analyzer(path, trainer_estimate=bound * 3)
    assert got == bound and warns == []


def test_a_bound_far_above_the_estimate_is_reported() -> None:
    path = str(SAMPLES / "plain.onnx")
    bound = analyze(path).bound
    _, warns = check_with_analyzer(path, trainer_estimate=bound / 100)
    assert len(warns) == 1 and "over 10x" in warns[0]
