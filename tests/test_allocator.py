"""The `lipgraph` command's memory setting (lipgraph.allocator): applied by the command's process only, skipped
where the user tuned the allocator or turned it off. Each case runs in a fresh interpreter, so this test
process keeps its own allocator settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import sys; import numpy as np; from lipgraph.allocator import keep_freed_memory; "
    "ok = keep_freed_memory() if sys.argv[1] == 'apply' else None; "
    "core = getattr(np, '_core', None) or np.core; "
    "huge = core.multiarray._set_madvise_hugepage(True); print(ok, huge)"
)
_OURS = ("MALLOC_", "LIPGRAPH_KEEP", "NUMPY_MADVISE")


def _probe(mode: str = "apply", **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    cmd = [sys.executable, "-c", PROBE, mode]
    return subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True, check=True).stdout.strip()


def _glibc() -> bool:
    import ctypes

    try:
        return bool(ctypes.CDLL(None).gnu_get_libc_version)
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _glibc()), reason="glibc's mallopt only")
def test_applied_by_default_and_numpy_huge_pages_off() -> None:
    assert _probe() == "True False"  # applied; numpy's huge-page advice was off (the setter returns the old state)


@pytest.mark.parametrize(
    "env", [{"LIPGRAPH_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}, {"MALLOC_MMAP_THRESHOLD_": "1"}]
)
def test_the_users_choice_wins(env: dict[str, str]) -> None:
    ok, huge = _probe(**env).split()
    _, numpy_default = _probe("leave").split()
    assert ok == "False" and huge == numpy_default  # nothing changed: numpy keeps its own default


def test_only_the_bound_command_process_applies_it() -> None:
    """``lipgraph.cli.main`` (what tests and the Python API call) leaves the allocator alone; ``run`` (the
    console script) applies the setting first, for ``bound`` only (certify streams data larger than memory)."""
    import inspect

    from lipgraph import cli

    assert "keep_freed_memory" in inspect.getsource(cli.run)
    assert "keep_freed_memory" not in inspect.getsource(cli.main)
    assert cli.KEEPS_FREED_MEMORY == ("bound",)
    assert cli._subcommand(["--debug", "bound", "m.onnx"]) == "bound"
    assert cli._subcommand(["certify", "m.onnx", "--data", "d.npz"]) == "certify"
    assert cli._subcommand(["--version"]) is None


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _glibc()), reason="glibc's mallopt only")
@pytest.mark.parametrize(("command", "applied"), [("bound", "False"), ("rules", "True")])
def test_the_console_script_applies_it_for_bound_only(command: str, applied: str) -> None:
    """Through the real entry point: after ``run`` (exit caught), numpy's huge-page advice is off for ``bound``
    and untouched for another subcommand (``rules``)."""
    script = (
        "import sys, numpy as np; from lipgraph import cli; sys.argv = ['lipgraph', sys.argv[1]]\n"
        "try:\n    cli.run()\nexcept SystemExit:\n    pass\n"
        "core = getattr(np, '_core', None) or np.core; print(core.multiarray._set_madvise_hugepage(True))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    arg = "bound" if command == "bound" else "rules"
    out = subprocess.run([sys.executable, "-c", script, arg], env=clean, capture_output=True, text=True)
    _, numpy_default = _probe("leave").split()
    last = out.stdout.strip().splitlines()[-1]
    assert last == (applied if command == "bound" else numpy_default), out.stdout + out.stderr
