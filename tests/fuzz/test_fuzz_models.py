"""Fuzzing `lipgraph bound`: mutated model bytes and mutated attributes/protos of valid small models.

Every case must end in exit 0 or 2, never an internal error, a traceback, an out-of-memory message
or a hang (an alarm per case). A sample also runs in real subprocesses with a timeout and a 4 GiB
address-space limit. The iteration counts are printed (``-s``) and asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz.fuzzlib import fuzz, mutate_bytes, mutate_proto, run_bound, seed_models

ROOT = Path(__file__).resolve().parents[2]


def _bytes(raw: bytes, rng: np.random.Generator, others: list[bytes]) -> tuple[bytes, str]:
    return mutate_bytes(raw, rng, others)


def _proto(raw: bytes, rng: np.random.Generator, _others: list[bytes]) -> tuple[bytes, str]:
    return mutate_proto(raw, rng)


def _check(n: int, seed: int, tmp_path: Path, mutate) -> None:  # noqa: ANN001
    ran, failures, codes = fuzz(n, seed, tmp_path, mutate)
    print(f"\nfuzz {mutate.__name__} seed={seed}: {ran} cases, exit codes {codes}")
    assert ran == n
    assert not failures, f"{len(failures)} of {n} cases broke the contract:\n" + "\n".join(failures[:20])
    # The mutations must exercise both outcomes, or the fuzzer tests nothing.
    assert codes.get(0, 0) > 0 and codes.get(2, 0) > 0, codes


def test_seed_models_are_valid(tmp_path: Path) -> None:
    for name, raw in seed_models().items():
        p = tmp_path / f"{name}.onnx"
        p.write_bytes(raw)
        res = run_bound(p)
        assert res.rc == 0 and not res.err, (name, res.err)


def test_fuzz_bytes(tmp_path: Path) -> None:
    _check(3000, 101, tmp_path, _bytes)


def test_fuzz_protos(tmp_path: Path) -> None:
    _check(2000, 202, tmp_path, _proto)


@pytest.mark.slow
def test_fuzz_bytes_many(tmp_path: Path) -> None:
    _check(10000, 303, tmp_path, _bytes)


@pytest.mark.slow
def test_fuzz_protos_many(tmp_path: Path) -> None:
    _check(6000, 404, tmp_path, _proto)


_CHILD = """
import resource, sys
limit = 4 * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from lipgraph.cli import main
sys.exit(main(["bound", sys.argv[1]]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is Linux behaviour")
def test_fuzz_sample_in_subprocesses(tmp_path: Path) -> None:
    """A sample of mutated cases in real processes: a timeout and a memory cap, not only an alarm."""
    seeds = list(seed_models().values())
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    bad = []
    n = 12
    for it in range(n):
        rng = np.random.default_rng([505, it])
        mutate = mutate_bytes if it % 2 else (lambda raw, r, _o: mutate_proto(raw, r))
        data, desc = mutate(seeds[it % len(seeds)], rng, seeds)
        p = tmp_path / f"case{it}.onnx"
        p.write_bytes(data)
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(p)], env=env, capture_output=True, text=True,
                              timeout=60)
        err = proc.stderr
        if proc.returncode not in (0, 2) or "internal error" in err or "Traceback" in err or "out of memory" in err:
            bad.append(f"{it} {desc}: rc={proc.returncode} {err.strip()[:200]}")
    assert not bad, "\n".join(bad)
