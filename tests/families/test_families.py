"""Every family model (tests/families/*.py), both torch exporters: lower <= bound <= 1.01 x upper.

``(lower, upper)`` is the model's true-constant range from its own oracle (exact dense Jacobian SVD for
linear nets; a Jacobian lower estimate and the family's proof for nonlinear ones), independent of
lipgraph. The analysis time is recorded in the bench (bench/lipschitz_families.py), not asserted.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from lipgraph import analyze  # noqa: E402
from tests.families import FamilyModel, all_models, export_onnx  # noqa: E402

pytestmark = pytest.mark.torch

TIGHT = 1.01  # the bound may exceed the true constant (or the family's certificate) by 1 % at most
NOISE = 1e-5  # float32 weights and exports: relative slack on the sound side


def _params() -> list:
    out = []
    for fm in all_models():
        for dynamo in (False, True):
            marks = [pytest.mark.slow] if fm.slow or dynamo else []
            out.append(pytest.param(fm, dynamo, id=f"{fm.key}-{'dynamo' if dynamo else 'legacy'}", marks=marks))
    return out


@pytest.mark.parametrize(("fm", "dynamo"), _params())
def test_bound_is_sound_and_tight(fm: FamilyModel, dynamo: bool) -> None:
    torch.manual_seed(0)
    model = fm.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export_onnx(model, fm.input_shape, dynamo)
    lower, upper = fm.true_constant(model)
    bound = analyze(proto).bound
    assert bound >= lower * (1 - NOISE), f"unsound: bound {bound} < true constant {lower}"
    assert bound <= TIGHT * upper, f"loose: bound {bound} > {TIGHT} x {upper} (true range [{lower}, {upper}])"
