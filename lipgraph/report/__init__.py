"""Renderers: one module per format, all views of the same JSON-able objects."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from lipgraph.atomic import publish
from lipgraph.errors import LipgraphError


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Fail early (before any work) when the report cannot be written where asked."""
    p = Path(path)
    if p.is_dir():
        raise LipgraphError(f"output path '{p}' is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise LipgraphError(f"output folder '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise LipgraphError(f"output folder '{parent}' is not writable")
    return p


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write the whole report or nothing: a temp file in the same folder, then an atomic rename."""
    p = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent if str(p.parent) else "."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        publish(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, permissions: the user's to fix, not an internal error
            raise LipgraphError(f"cannot write the report to '{p}': {exc.strerror or exc}") from None
        raise
