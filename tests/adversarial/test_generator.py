"""The adversarial generator's runs: every model is refused or bounded at least at its true Lipschitz
constant (as estimated from below through ONNX Runtime); lies are refused as malformed, and
reordered or honestly re-declared models get the plain model's bound.

The default run checks 300 models (about 20 s of CPU); the slow run 4000 more, with other seeds.
"""

from __future__ import annotations

import collections

import pytest

from tests.adversarial.generator import Verdict, check, generate


def _run(seeds: range) -> tuple[collections.Counter, list[Verdict]]:
    counts: collections.Counter = collections.Counter()
    bad: list[Verdict] = []
    for seed in seeds:
        v = check(generate(seed))
        counts[v.outcome] += 1
        counts[v.case.mutation] += 1
        if not v.ok:
            bad.append(v)
    return counts, bad


def _report(bad: list[Verdict]) -> str:
    return "\n".join(f"{v.case!r}: {v.outcome} bound={v.bound} lower={v.lower} {v.detail}" for v in bad[:20])


def _assert_meaningful(counts: collections.Counter, n: int) -> None:
    # not vacuous: most models are bounded (not refused), and every mutation is exercised
    assert counts["bound"] >= 0.6 * n, counts
    for m in ("none", "lie_shape", "lie_type", "lie_value_info", "honest_output", "shuffle", "symbolic"):
        assert counts[m] > 0, (m, counts)


def test_generator_default_run() -> None:
    counts, bad = _run(range(300))
    assert not bad, _report(bad)
    _assert_meaningful(counts, 300)


@pytest.mark.slow
def test_generator_large_run() -> None:
    counts, bad = _run(range(10_000, 14_000))
    assert not bad, _report(bad)
    _assert_meaningful(counts, 4000)
