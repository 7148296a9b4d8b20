"""Near-misses of every 1-Lipschitz family model (tests/adversarial/near_miss.py): each mutated model is
refused or bounded at least at a lower estimate of its true constant through ONNX Runtime.

Not vacuous: most mutated models are bounded, and a good share of them really leave their family (the
lower estimate is above the family's certificate), so a structured rule that trusted the graph's shape
would certify them too low. Forcing the dense or the conv Sandwich certificate to 1 makes this run fail.
The default run checks 500 seeds on the legacy exports (20 per family model, ~25 s); the slow run 1,000 more on
the legacy exports and 1,000 on the dynamo exporter's graphs of the same models (~2.5 min with the exports).
"""

from __future__ import annotations

import collections

import pytest

pytest.importorskip("torch")

from tests.adversarial.near_miss import Outcome, check, generate  # noqa: E402

pytestmark = pytest.mark.torch


def _run(seeds: range, dynamo: bool = False) -> tuple[collections.Counter, list[Outcome]]:
    counts: collections.Counter = collections.Counter()
    bad: list[Outcome] = []
    for seed in seeds:
        case = generate(seed, dynamo)
        if case is None:
            counts["not applicable"] += 1
            continue
        out = check(case)
        counts[out.outcome] += 1
        counts[case.mutation] += 1
        if out.outcome == "bound" and out.lower is not None and out.lower > 1.001:
            counts["left the family"] += 1
        if not out.ok:
            bad.append(out)
    return counts, bad


def _report(bad: list[Outcome]) -> str:
    return "\n".join(f"{o.case!r}: bound {o.bound} < lower estimate {o.lower}" for o in bad[:20])


def _assert_meaningful(counts: collections.Counter) -> None:
    applicable = counts["bound"] + counts["refused"] + counts["unchanged"]
    assert counts["bound"] >= 0.6 * applicable, counts
    assert counts["left the family"] >= 0.15 * counts["bound"], counts
    for m in (
        "scale_entry",
        "flip_sign",
        "noise",
        "scale_tensor",
        "scalar",
        "swap_entries",
        "activation",
        "max_min",
        "drop_op",
    ):
        assert counts[m] > 0, (m, counts)


def test_near_misses_default_run() -> None:
    counts, bad = _run(range(500))
    assert not bad, _report(bad)
    _assert_meaningful(counts)


@pytest.mark.slow
def test_near_misses_large_run() -> None:
    counts, bad = _run(range(100_000, 101_000))
    assert not bad, _report(bad)
    _assert_meaningful(counts)


@pytest.mark.slow
def test_near_misses_dynamo_exports() -> None:
    counts, bad = _run(range(200_000, 201_000), dynamo=True)
    assert not bad, _report(bad)
    _assert_meaningful(counts)
