"""Numbers printed the safe way, and every gate message states a comparison that is true as printed."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipgraph.gates import GateConfig, evaluate
from lipgraph.numbers import comparison, percent_down, round_down, round_up

_REL = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
_CMP = re.compile(r"(-?[0-9.e+-]+) (<=|>=|<|>) (-?[0-9.e+-]+)")


def _holds_as_printed(text: str) -> tuple[Decimal, str, Decimal]:
    m = _CMP.search(text)
    assert m, text
    a, op, b = Decimal(m.group(1)), m.group(2), Decimal(m.group(3))
    assert _REL[op](a, b), f"printed comparison is false: {text!r}"
    return a, op, b


@dataclass
class FakeCert:
    """The part of a Certificate the gates read, with chosen (adversarial) values."""

    acc: dict[float, float]
    clean_accuracy: float | None = None
    lipschitz_bound: float = 1.0
    eps: list[float] = field(default_factory=list)

    def certified_at(self, e: float) -> float:
        return self.acc[e]


# Values next to their thresholds, where rounding to nearest printed comparisons that contradict themselves.
@pytest.mark.parametrize(
    "got,thr",
    [
        (0.60169, 0.6017),
        (0.6017, 0.6017),
        (0.60175, 0.60171),
        (0.6, 0.6),
        (216 / 359, 0.6017),
        (216 / 359, 0.6016),
        (0.99999, 1.0),
        (1.0, 1.0),
    ],
)
def test_certified_accuracy_message(got: float, thr: float) -> None:
    (g,) = evaluate(FakeCert({0.5: got}, eps=[0.5]), GateConfig(min_certified_accuracy={0.5: thr}), None)
    a, op, _ = _holds_as_printed(g.message)
    assert op == (">=" if got >= thr else "<") and g.passed == (got >= thr)
    assert a <= Decimal(repr(got))  # an accuracy is never printed above its value
    assert g.extra["comparison"] in g.message


@pytest.mark.parametrize("got,thr", [(0.98049, 0.9805), (0.9805, 0.9805), (0.9, 0.95), (352 / 359, 0.98)])
def test_clean_accuracy_message(got: float, thr: float) -> None:
    (g,) = evaluate(FakeCert({}, clean_accuracy=got), GateConfig(min_clean_accuracy=thr), None)
    a, op, _ = _holds_as_printed(g.message)
    assert g.passed == (got >= thr) and op == (">=" if g.passed else "<") and a <= Decimal(repr(got))


@pytest.mark.parametrize(
    "got,thr",
    [(1.0000001, 1.0), (1.0, 1.0), (1.05, 1.05), (35.65650049, 35.6565005), (0.99999999999, 1.0), (1e-9, 1e-9)],
)
def test_lipschitz_message(got: float, thr: float) -> None:
    (g,) = evaluate(FakeCert({}, lipschitz_bound=got), GateConfig(max_lipschitz=thr), None)
    a, op, _ = _holds_as_printed(g.message)
    assert g.passed == (got <= thr) and op == ("<=" if g.passed else ">")
    assert a >= Decimal(repr(got))  # a bound is never printed below its value


@pytest.mark.parametrize(
    "old,new,max_drop,ok",
    [
        (0.8, 0.79, 0.01, True),  # 0.8 - 0.79 is 0.010000000000000009 in floats: still within 0.01 as written
        (0.8, 0.7899, 0.01, False),
        (0.6017, 0.6016, 0.0, False),
        (0.5, 0.55, 0.0, True),  # an improvement
    ],
)
def test_baseline_drop_message(old: float, new: float, max_drop: float, ok: bool) -> None:
    cfg = GateConfig(baseline="old.json", max_drop=max_drop)
    (g,) = evaluate(FakeCert({0.5: new}, eps=[0.5]), cfg, {0.5: old})
    assert g.passed is ok
    _, op, _ = _holds_as_printed(g.message.split("(drop ")[1])
    assert op == ("<=" if ok else ">")


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(finite, finite, st.booleans())
def test_comparison_is_true_as_printed_and_safe(actual: float, threshold: float, up: bool) -> None:
    ops = ["<=", ">="] if actual == threshold else (["<", "<="] if actual < threshold else [">", ">="])
    for op in ops:
        a, _, b = _holds_as_printed(comparison(actual, op, threshold, actual_up=up))
        assert b == Decimal(repr(threshold))  # the threshold exactly as given
        assert (a >= Decimal(repr(actual))) if up else (a <= Decimal(repr(actual)))


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e12))
def test_round_up_and_down_read_back_on_the_safe_side(x: float) -> None:
    assert float(round_up(x)) >= x and float(round_down(x)) <= x
    mantissa = round_up(x, 6).split("e")[0]
    assert len(mantissa.replace(".", "").lstrip("0").rstrip("0")) <= 6


def test_percent_down() -> None:
    assert percent_down(216 / 359) == "60.16%"  # 60.1671...%, which rounding to nearest printed as 60.17%
    assert percent_down(1.0) == "100.00%" and percent_down(0.0) == "0.00%" and percent_down(None) == "n/a"
    assert percent_down(0.29) == "29.00%"  # 0.29 * 100 is 28.999999999999996 in floats
    assert math.isclose(float(percent_down(2 / 3)[:-1]), 66.66)


def test_comparison_refuses_a_false_relation() -> None:
    with pytest.raises(ValueError):
        comparison(0.5, ">", 0.6, actual_up=False)
