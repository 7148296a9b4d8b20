"""Outputs of `lipgraph certify`: several formats from one run, written together, and the verdict line.

``--output FORMAT=PATH`` (repeatable) names a file per format; the classic ``--format F -o FILE``
still works, and several ``--format``/``-o FILE`` pairs are matched in order. Every report is
rendered from the same certificate and written to temp files before any is published; the atomic
renames come last, so a failed run leaves none of its reports (never a mix of this run and the last).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lipgraph.atomic import publish
from lipgraph.errors import LipgraphError
from lipgraph.numbers import percent_down
from lipgraph.report import check_output_path

FORMATS = ["text", "json", "junit", "markdown", "html", "sarif", "github", "gitlab"]
# Formats that carry findings (failed gates, refused nodes): also written when the model is refused.
FINDING_FORMATS = {"sarif", "github", "gitlab"}
_TYPED = re.compile(r"([A-Za-z]+)=(.+)")


@dataclass(frozen=True)
class Output:
    fmt: str
    path: str | None  # None: standard output


def quiet_requested(flag: bool) -> bool:
    """``--quiet`` given to the command or to the group (``lipgraph -q certify ...``)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return flag or bool(root is not None and isinstance(root.obj, dict) and root.obj.get("quiet"))


def plan_outputs(formats: tuple[str, ...], outputs: tuple[str, ...]) -> list[Output]:
    """Pair formats with destinations; every problem is reported before any work starts."""
    typed: list[Output] = []
    plain: list[str] = []
    for spec in outputs:
        m = _TYPED.fullmatch(spec)
        if m and m.group(1).lower() in FORMATS:
            typed.append(Output(m.group(1).lower(), m.group(2)))
        elif m and not Path(spec).exists():
            raise LipgraphError(
                f"unknown format '{m.group(1)}' in --output {spec} (known: {', '.join(FORMATS)}); "
                "write ./PATH for a file whose name contains '='"
            )
        else:
            plain.append(spec)
    plan: list[Output] = []
    if len(plain) > 1 or len(formats) > 1:
        if len(plain) != len(formats):
            raise LipgraphError(
                f"{len(formats)} --format and {len(plain)} -o FILE given: give one --format per "
                "-o FILE, or write each output as --output FORMAT=PATH"
            )
        plan += [Output(f, p) for f, p in zip(formats, plain, strict=True)]
    elif plain:
        plan.append(Output(formats[0] if formats else "text", plain[0]))
    elif formats or not typed:
        plan.append(Output(formats[0] if formats else "text", None))
    plan += typed
    seen: dict[str, str] = {}
    for out in plan:
        if out.path is None:
            continue
        check_output_path(out.path)
        key = os.path.realpath(out.path)
        if key in seen:
            raise LipgraphError(
                f"'{out.path}' is named for two outputs ({seen[key]} and {out.fmt}); give each its own file"
            )
        seen[key] = out.fmt
    return plan


def renderer(fmt: str) -> Callable[[Any], str]:
    if fmt == "html":
        from lipgraph.report import html as html_mod

        return html_mod.render_certificate if hasattr(html_mod, "render_certificate") else html_mod.render_html
    if fmt == "sarif":
        from lipgraph.report.sarif import render_sarif

        return render_sarif
    if fmt in ("github", "gitlab"):
        from lipgraph.report import ci_annotations

        return ci_annotations.render_github if fmt == "github" else ci_annotations.render_gitlab
    from lipgraph.report.certify import RENDERERS

    return RENDERERS[fmt]


def emit(plan: list[Output], report: Any, only: set[str] | None = None) -> None:
    """Render every output of ``plan`` (those in ``only``, when given), then publish them all."""
    from lipgraph.report.json_stream import has_rows, json_chunks, without_rows

    chosen = [o for o in plan if only is None or o.fmt in only]
    # All rendered before anything is written, except a JSON report's per-sample rows: those are written
    # chunk by chunk into its temp file (lipgraph.report.json_stream), and published with the others.
    summary = without_rows(report)
    texts: list[tuple[Output, str | Iterable[str]]] = [
        (o, json_chunks(report) if o.fmt == "json" and has_rows(report) else renderer(o.fmt)(summary)) for o in chosen
    ]
    _write_all([(o.path, t) for o, t in texts if o.path is not None])
    for o, t in texts:
        if o.path is None:
            for part in [t] if isinstance(t, str) else t:
                click.echo(part, nl=False)


def _write_all(files: list[tuple[str, str | Iterable[str]]]) -> None:
    temps: list[tuple[str, Path]] = []
    try:
        for path, text in files:
            p = check_output_path(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
            temps.append((tmp, p))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for part in [text] if isinstance(text, str) else text:
                    fh.write(part)
        for tmp, p in temps:
            publish(tmp, p)
    except BaseException as exc:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, permissions: the user's to fix, not an internal error
            raise LipgraphError(f"cannot write the report: {exc.strerror or exc}") from None
        raise


def verdict_line(d: dict[str, Any]) -> str:
    """The one line a CI log always gets, e.g. ``lipgraph: FAIL 1 of 5 gates: clean_accuracy 0.9 < 0.95``."""
    gates = d.get("gates", [])
    if not gates:
        accs = ", ".join(
            f"{percent_down(v)} at {k}" for k, v in sorted(d["certified_accuracy"].items(), key=lambda kv: float(kv[0]))
        )
        return f"lipgraph: no gates configured; certified accuracy {accs}"
    failed = [g for g in gates if not g["passed"]]
    if not failed:
        return f"lipgraph: PASS {len(gates)} of {len(gates)} gates"
    why = "; ".join(f"{g['name']} {g['comparison']}" if g.get("comparison") else g["message"] for g in failed)
    return f"lipgraph: FAIL {len(failed)} of {len(gates)} gates: {why}"
