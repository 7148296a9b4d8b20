"""Progress bars (tqdm) for long work: inference, the bound of a large model, training batches.

A bar is drawn only where a person watches: on stderr, when stderr is a terminal, not with
``--quiet`` and not in CI (the ``CI`` variable, set by GitHub Actions, GitLab CI and most others;
a log file full of carriage returns helps nobody). Bars have no colour, so ``NO_COLOR`` holds.
Reports on stdout are never touched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_FALSE = ("", "0", "false", "no", "off")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in _FALSE


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def enabled(quiet: bool = False) -> bool:
    """Whether to draw a bar: not quiet, stderr a terminal, not in CI."""
    return not (quiet or in_ci()) and stderr_is_terminal()


def _bar(total: int | None, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    # colour=None: tqdm prints no colour codes; leave=False: the finished bar clears itself, so the
    # terminal keeps only the results.
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.1,
        colour=None,
    )


def inference_progress(
    quiet: bool = False, desc: str = "inference", unit: str = "sample"
) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` callback with rate and ETA, or None where no bar is wanted."""
    if not enabled(quiet):
        return None
    state: dict[str, Any] = {}

    def report(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = _bar(total, desc, unit)
        bar.update(done - bar.n)
        if done >= total:
            bar.refresh()  # the final count is drawn even when the last update came within mininterval
            bar.close()

    return report


def iterate(
    items: Iterable[T], *, desc: str, unit: str, quiet: bool = False, total: int | None = None, on: bool = True
) -> Iterator[T]:
    """``items``, with a bar when :func:`enabled` (and ``on``)."""
    if not (on and enabled(quiet)):
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = _bar(total, desc, unit)
    try:
        for item in items:
            yield item
            bar.update(1)
        bar.refresh()  # draw the final count (the last updates may fall within mininterval)
    finally:
        bar.close()
