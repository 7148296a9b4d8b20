"""Where `lipgraph certify` finds its settings: ``[tool.lipgraph]`` in a pyproject.toml.

The search works like ruff's: starting in the **working directory**, each folder up to the root is
tried, and a ``pyproject.toml`` counts only when it has a ``[tool.lipgraph]`` table. A sub-package's
pyproject without the table (common in a monorepo) is skipped, so the gates of the repository root
still apply; a gate never switches off because a nearer file exists.

Why the working directory and not the model's folder: CI runs from the repository's root, while
models are often downloaded artifacts in a temporary folder outside any repository. The file used
is printed in every report (``config`` in the text summary, ``meta.config`` in JSON).

``--config PATH`` names the file (it must have the table); ``--no-config`` ignores every file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from lipgraph.errors import LipgraphError
from lipgraph.gates import GateConfig, load_config

TABLE = "[tool.lipgraph]"


def _has_table(path: Path) -> bool:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LipgraphError(f"cannot read '{path}': {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LipgraphError(f"'{path}' is not valid TOML: {exc}") from None
    tool = data.get("tool")
    return isinstance(tool, dict) and "lipgraph" in tool


def find_config(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a ``[tool.lipgraph]`` table: ``start`` (default: the working
    directory), then its parents. Files without the table are skipped."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        cand = folder / "pyproject.toml"
        if cand.is_file() and _has_table(cand):
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
