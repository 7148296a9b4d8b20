"""Small helpers for hand-written inline SVG charts (no plotting dependency).

Everything returns strings; every piece of text that reaches the markup goes through :func:`esc`.
Coordinates are rounded to 0.01 px so that files stay small and diffs stay stable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape


def esc(text: object) -> str:
    """Escape any text for HTML/SVG content and attribute values (quotes included)."""
    return escape(str(text), quote=True)


def num(x: float) -> str:
    """A coordinate: 2 decimals, no trailing zeros, no "-0"."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def attrs(**kw: object) -> str:
    """``key="value"`` pairs; ``None`` values are left out, ``_`` in names becomes ``-``, a trailing one is dropped."""
    parts = []
    for k, v in kw.items():
        if v is None:
            continue
        name = k.rstrip("_").replace("_", "-")
        parts.append(f'{name}="{esc(v)}"')
    return " ".join(parts)


def nice_step(span: float, target: int = 5) -> float:
    """A 1/2/5 x 10^k step giving about ``target`` intervals over ``span``."""
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10.0 * mag


def nice_max(x: float, target: int = 5) -> tuple[float, float]:
    """An axis end >= ``x`` on a round step, and that step."""
    if not x > 0 or not math.isfinite(x):
        return 1.0, 0.2
    step = nice_step(x, target)
    return step * math.ceil(x / step * (1 - 1e-12)), step


def ticks(lo: float, hi: float, step: float) -> list[float]:
    n = int(math.floor((hi - lo) / step + 1e-9))
    return [lo + i * step for i in range(n + 1)]


def tick_label(v: float, step: float) -> str:
    """Enough decimals to tell ticks ``step`` apart."""
    if step >= 1 and abs(v - round(v)) < 1e-9:
        return f"{round(v):d}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (0 if _is_round(step) else 1)
    return f"{v:.{decimals}f}"


def _is_round(step: float) -> bool:
    mag = 10.0 ** math.floor(math.log10(step) + 1e-9)
    return abs(step / mag - round(step / mag)) < 1e-9


@dataclass(frozen=True)
class Linear:
    """Maps data [d0, d1] onto pixels [p0, p1] (p1 < p0 for a y axis pointing up)."""

    d0: float
    d1: float
    p0: float
    p1: float

    def __call__(self, v: float) -> float:
        if self.d1 == self.d0:
            return self.p0
        return self.p0 + (v - self.d0) * (self.p1 - self.p0) / (self.d1 - self.d0)


def title_desc(id_: str, title: str, desc: str) -> tuple[str, str]:
    """The ``<title>``/``<desc>`` children and the ``aria-labelledby`` value of an accessible SVG."""
    inner = f'<title id="{esc(id_)}-t">{esc(title)}</title><desc id="{esc(id_)}-d">{esc(desc)}</desc>'
    return inner, f"{id_}-t {id_}-d"


def svg_open(id_: str, width: int, height: int, title: str, desc: str, **extra: object) -> str:
    inner, labelled = title_desc(id_, title, desc)
    return (f'<svg {attrs(id=id_, viewBox=f"0 0 {width} {height}")} '
            f'width="{width}" height="{height}" role="img" {attrs(aria_labelledby=labelled, **extra)}>'
            + inner)


def step_path(points: Iterable[tuple[float, float]]) -> str:
    """``M x y`` then alternating ``H``/``V`` commands through pixel ``points`` of a step function.

    ``points`` are the corners in order: (x0, y0), then (x1, y0) -> (x1, y1) and so on is produced
    from consecutive (x, y) pairs as "horizontal to the next x, then vertical to its y".
    """
    it = iter(points)
    try:
        x, y = next(it)
    except StopIteration:
        return ""
    out = [f"M{num(x)} {num(y)}"]
    for nx, ny in it:
        if nx != x:
            out.append(f"H{num(nx)}")
        if ny != y:
            out.append(f"V{num(ny)}")
        x, y = nx, ny
    return " ".join(out)


def polyline(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{num(x)},{num(y)}" for x, y in points)
