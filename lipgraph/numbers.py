"""Numbers printed the safe way: upper bounds rounded up, accuracies and radii rounded down.

A message such as ``Lipschitz bound is 1 (> 1)`` contradicts itself: rounded to nearest, a failing
bound of 1.0000001 prints as the threshold it exceeds. Every number a verdict prints therefore goes
through this module:

* :func:`round_up` / :func:`round_down` round the float's shortest decimal form (Python's ``repr``,
  which reads back as the same float) in the stated direction. The printed text, read back as a
  float, is never on the unsafe side of the value: a value strictly between the float and its
  shortest form would itself read back as the float and be shorter, a contradiction.
* :func:`comparison` prints ``actual OP threshold`` with the actual value rounded in its safe
  direction and the threshold exactly as the user wrote it (its shortest form), adding digits until
  the printed comparison is true. It always ends: at full precision the shortest forms compare as
  the floats do (the shortest form is monotone in the float).
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def shortest(x: float) -> Decimal:
    """The shortest decimal that reads back as ``x`` (exact for thresholds such as 0.8)."""
    return Decimal(repr(float(x)))


def _round(x: float, digits: int, up: bool) -> Decimal:
    d = shortest(x)
    if d == 0:
        return d
    quantum = Decimal(1).scaleb(d.adjusted() - digits + 1)
    return d.quantize(quantum, rounding=ROUND_CEILING if up else ROUND_FLOOR)


def _text(d: Decimal) -> str:
    d = d.normalize()
    if d == 0:
        return "0"
    if -7 <= d.adjusted() < 16:
        return format(d, "f")
    return format(d, "E").replace("E+", "e+").replace("E-", "e-")


def _special(x: float) -> str | None:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return None


def round_up(x: float, digits: int = 6) -> str:
    """``x`` with ``digits`` significant digits, rounded toward +inf (for upper bounds, drops)."""
    return _special(x) or _text(_round(x, digits, up=True))


def round_down(x: float, digits: int = 4) -> str:
    """``x`` with ``digits`` significant digits, rounded toward -inf (for accuracies, radii)."""
    return _special(x) or _text(_round(x, digits, up=False))


def exact(x: float) -> str:
    """The shortest form of ``x`` (how a user-given threshold is printed)."""
    return _special(x) or _text(shortest(x))


def percent_down(x: float | None, decimals: int = 2) -> str:
    """An accuracy (a fraction) as a percentage, rounded down: 0.60169 -> ``60.16%``."""
    if x is None:
        return "n/a"
    if _special(x):
        return _special(x) or ""
    p = (shortest(x) * 100).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_FLOOR)
    return f"{p}%"


def percent_exact(x: float) -> str:
    """A threshold (a fraction) as a percentage, exactly as given: 0.6 -> ``60%`` (not 60.00000000000001%)."""
    return _special(x) or f"{_text(shortest(x) * 100)}%"


def percent_up(x: float, decimals: int = 2) -> str:
    """A fraction as a percentage rounded up (for drops): 0.010000001 -> ``1.01%``."""
    if _special(x):
        return _special(x) or ""
    return f"{(shortest(x) * 100).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_CEILING)}%"


def comparison(actual: float, op: str, threshold: float, actual_up: bool, digits: int = 4) -> str:
    """``"0.7604 < 0.8"``: ``actual`` rounded safely (up when ``actual_up``), ``threshold`` exactly.

    ``op`` must be the relation that holds between the floats; digits are added to ``actual`` until
    the printed relation holds as well.
    """
    rel = _OPS[op]
    if not rel(float(actual), float(threshold)):
        raise ValueError(f"{actual!r} {op} {threshold!r} does not hold")
    if _special(actual) or _special(threshold):
        return f"{round_up(actual) if actual_up else round_down(actual)} {op} {exact(threshold)}"
    t = shortest(threshold)
    for d in range(digits, 18):
        a = _round(actual, d, up=actual_up)
        if rel(a, t):
            return f"{_text(a)} {op} {_text(t)}"
    return f"{_text(shortest(actual))} {op} {_text(t)}"  # not reached: see the module docstring
