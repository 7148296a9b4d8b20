"""The command line pins BLAS threads (before numpy loads); library imports and user settings are left alone."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import sys; sys.argv = [{argv0!r}]; import lipgraph, os; print(os.environ.get('OPENBLAS_NUM_THREADS'))"


def _probe(argv0: str, env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "LIPGRAPH_BLAS_THREADS")}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv0=argv0)], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def test_cli_invocation_pins_one_blas_thread() -> None:
    assert _probe("/usr/bin/lipgraph", None) == "1"


def test_user_setting_wins() -> None:
    assert _probe("/usr/bin/lipgraph", "3") == "3"


def test_library_import_changes_nothing() -> None:
    assert _probe("my_script.py", None) == "None"
