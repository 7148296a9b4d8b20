"""Plain-text and Markdown tables (no dependency, stable output for tests and CI logs)."""

from __future__ import annotations

from collections.abc import Sequence


def fmt_float(x: float | None, digits: int = 6) -> str:
    if x is None:
        return "-"
    if x != x:  # NaN
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def fmt_upper(x: float | None, digits: int = 6) -> str:
    """Like :func:`fmt_float`, but rounded toward +inf: a printed upper bound stays an upper bound.

    ``f"{x:.8g}"`` rounds to nearest, so a bound of 15.4919334 would print as 15.491933, below
    the sound value; someone copying the text into a radius computation would over-certify.
    """
    import math
    from decimal import ROUND_CEILING, Decimal

    if x is None or not math.isfinite(x) or x == 0:
        return fmt_float(x, digits)
    d = Decimal(x)  # the exact binary value
    q = d.quantize(Decimal(1).scaleb(d.adjusted() - digits + 1), rounding=ROUND_CEILING)
    return f"{float(q):.{digits}g}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    right = right or [False] * len(headers)

    def line(cells: Sequence[str]) -> str:
        # rstrip: padding the last column leaves trailing spaces that editors and diffs flag
        cols = zip(cells, widths, right, strict=True)
        return "  ".join(c.rjust(w) if rj else c.ljust(w) for c, w, rj in cols).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)]).rstrip() + "\n"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right or [False] * len(headers)

    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |"]
    out.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    out.extend("| " + " | ".join(esc(c) for c in row) + " |" for row in rows)
    return "\n".join(out) + "\n"


def fmt_lower(x: float | None, digits: int = 6) -> str:
    """Like :func:`fmt_float`, but rounded toward -inf: a printed radius never over-certifies."""
    if x is None or x != x or x in (float("inf"), float("-inf")) or x == 0:
        return fmt_float(x, digits)
    # Rounding x toward -inf is rounding -x toward +inf, then flipping the sign back.
    flipped = fmt_upper(-x, digits)
    return flipped[1:] if flipped.startswith("-") else "-" + flipped
