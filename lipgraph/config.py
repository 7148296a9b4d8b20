"""Where `lipgraph certify` finds its settings: ``[tool.lipgraph]`` in a pyproject.toml.

The search works like ruff's: starting in the **working directory**, each folder up to the root is
tried, and a ``pyproject.toml`` counts only when it has a ``[tool.lipgraph]`` table. A sub-package's
pyproject without the table (common in a monorepo) is skipped, so the gates of the repository root
still apply; a gate never switches off because a nearer file exists. The same holds for a table with
only other commands' sub-tables (``[tool.lipgraph.train]``). A misspelt table (``[tool.lipgrahp]``,
a top-level ``[lipgraph]``) or a ``lipgraph.toml`` met on the way up is an error: their gates would
never run.

Why the working directory and not the model's folder: CI runs from the repository's root, while
models are often downloaded artifacts in a temporary folder outside any repository. The file used
is printed in every report (``config`` in the text summary, ``meta.config`` in JSON).

``--config PATH`` names the file (it must have the table); ``--no-config`` ignores every file.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from lipgraph.errors import LipgraphError
from lipgraph.gates import GATE_KEYS, OTHER_TABLES, GateConfig, load_config

TABLE = "[tool.lipgraph]"
# Files a user may expect lipgraph to read; it reads only pyproject.toml, so finding one is an error
# (gates written there would otherwise never run, and the run would pass with "no gates configured").
_UNREAD = ("lipgraph.toml", ".lipgraph.toml")


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LipgraphError(f"cannot read '{path}': {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LipgraphError(f"'{path}' is not valid TOML: {exc}") from None


def _has_table(path: Path) -> bool:
    tool = _read(path).get("tool")
    return isinstance(tool, dict) and "lipgraph" in tool


def _certify_table(path: Path) -> bool:
    """Whether ``path`` has a ``[tool.lipgraph]`` table that speaks for certify: one with only other
    commands' sub-tables (a sub-package's ``[tool.lipgraph.train]``) does not, so it never hides the
    gates of a pyproject further up. A misspelt table name (``[tool.lipgrahp]``) is refused."""
    data = _read(path)
    tool = data.get("tool")
    if not isinstance(tool, dict) or "lipgraph" not in tool:
        names = [str(k) for k in tool] if isinstance(tool, dict) else []
        close = difflib.get_close_matches("lipgraph", [n.lower() for n in names], n=1, cutoff=0.75)
        if close or "lipgraph" in data:
            wrong = f"[tool.{names[[n.lower() for n in names].index(close[0])]}]" if close else "[lipgraph]"
            raise LipgraphError(
                f"'{path}' has a {wrong} table, not {TABLE}: its settings would be ignored; rename it to {TABLE}"
            )
        return False
    table = tool["lipgraph"]
    if not isinstance(table, dict) or not table:
        return True  # load_config refuses a non-table; an empty table is an explicit "no gates here"
    # a sub-table holding a gate key counts, so that load_config refuses it rather than the search skipping it
    return not all(
        k.replace("_", "-") in OTHER_TABLES
        and isinstance(v, dict)
        and not any(str(g).replace("_", "-") in GATE_KEYS for g in v)
        for k, v in table.items()
    )


def find_config(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a ``[tool.lipgraph]`` table of certify settings: ``start``
    (default: the working directory), then its parents. Files without the table are skipped."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name in _UNREAD:
            if (folder / name).is_file():
                raise LipgraphError(
                    f"'{folder / name}' is not read: lipgraph reads {TABLE} in pyproject.toml; "
                    "move the settings there (or pass --config / --no-config)"
                )
        cand = folder / "pyproject.toml"
        if cand.is_file() and _certify_table(cand):
            return cand
    return None


def resolve_config(config: str | None = None, no_config: bool = False, start: Path | None = None) -> GateConfig:
    """The settings of this run: none (``no_config``), the named file, or the one found upward."""
    if no_config:
        if config:
            raise LipgraphError("--config and --no-config exclude each other; give one")
        return GateConfig()
    if config:
        path = Path(config)
        if not path.is_file():
            raise LipgraphError(f"config file '{path}' does not exist (or is not a file)")
        if not _has_table(path):
            raise LipgraphError(f"config file '{path}' has no {TABLE} table; add one or drop --config")
        return load_config(path)
    found = find_config(start)
    return load_config(found) if found else GateConfig()
