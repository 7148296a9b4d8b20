"""Every op lipgraph bounds has a float-error model, or is listed with the reason certify refuses it.

A new bound rule without a float-error handler (``lipgraph.floaterr.local.HANDLERS``) makes this fail:
``lipgraph certify`` would otherwise refuse every model that uses it while ``lipgraph bound`` accepts it.
"""

from __future__ import annotations

import inspect

import pytest

import lipgraph.passes as passes_pkg
from lipgraph.errors import Refuse
from lipgraph.floaterr.coverage import BOUND_ALWAYS_REFUSES, NO_FLOAT_MODEL
from lipgraph.floaterr.local import HANDLERS
from lipgraph.graph import Node
from lipgraph.rules import load_rules
from lipgraph.rules.registry import LIPGRAPH_DOMAIN, RuleContext, all_rules

# Add and Sub pick their handler by how many inputs are variable (lipgraph.floaterr.local.handler_for).
_DISPATCHED = {"Add", "Sub"}


def _rules() -> list:
    load_rules()
    return all_rules()


def _emitting_modules(op: str) -> set[str]:
    """The pass modules (lipgraph/passes/*.py) whose source writes the op's name as a string."""
    import importlib
    import pkgutil

    found = set()
    for info in pkgutil.iter_modules(passes_pkg.__path__):
        src = inspect.getsource(importlib.import_module(f"lipgraph.passes.{info.name}"))
        if f'"{op}"' in src:
            found.add(info.name)
    return found


def _only_tightening_modules() -> set[str]:
    """Modules all of whose registered passes only tighten (left out of the float error walk)."""
    mods: dict[str, set[bool]] = {}
    for entry in passes_pkg.PASS_ORDER:
        mods.setdefault(entry.module, set()).add(entry.tightening)
    return {m for m, kinds in mods.items() if kinds == {True}}


def _survives_the_walk(op: str) -> bool:
    """A lipgraph-domain op the float walk can meet: written by a pass that is not tightening-only."""
    emitters = _emitting_modules(op)
    return not emitters or bool(emitters - _only_tightening_modules())


def test_every_rule_has_a_float_error_model_or_a_documented_refusal() -> None:
    missing = []
    for spec in _rules():
        op = spec.op_type
        if spec.domain == LIPGRAPH_DOMAIN and not _survives_the_walk(op):
            continue  # fused only by passes the walk leaves out; it sees the unfused ops
        if op in HANDLERS or op in _DISPATCHED or op in NO_FLOAT_MODEL or op in BOUND_ALWAYS_REFUSES:
            continue
        missing.append(f"{spec.domain}:{op}")
    assert not missing, f"bound rules without a float-error model (add a handler or a NO_FLOAT_MODEL entry): {missing}"


def test_tightening_only_fusions_are_really_left_out_of_the_walk() -> None:
    """The exemption above is earned: each such op is written by tightening-only passes, and those are
    exactly the passes ``default_passes(tightening=False)`` drops."""
    kept = {p.__module__.rsplit(".", 1)[-1] for p in passes_pkg.default_passes(tightening=False)}
    exempt = [s.op_type for s in _rules() if s.domain == LIPGRAPH_DOMAIN and not _survives_the_walk(s.op_type)]
    assert exempt, "expected some tightening-only fusions (LinearMap, Sandwich, ...)"
    for op in exempt:
        assert _emitting_modules(op) and not (_emitting_modules(op) & kept), op


@pytest.mark.parametrize("op", sorted(BOUND_ALWAYS_REFUSES))
def test_ops_exempted_because_bound_refuses_really_are_refused(op: str) -> None:
    """An op may skip a float model only when its bound rule refuses it outright (so bound refuses too)."""
    specs = [s for s in _rules() if s.op_type == op]
    assert specs, f"{op} has no rule: remove it from BOUND_ALWAYS_REFUSES"
    for spec in specs:
        node = Node(f"n_{op}", op, spec.domain, ["x"], ["y"], {}, max(spec.since, 18))
        with pytest.raises(Refuse):
            spec.fn(RuleContext(node, None, [1.0]))  # type: ignore[arg-type]


def test_the_refusal_list_is_short_and_not_stale() -> None:
    ops = {s.op_type for s in _rules()}
    assert len(NO_FLOAT_MODEL) <= 6
    for op, reason in NO_FLOAT_MODEL.items():
        assert op in ops, f"{op} has no bound rule: remove it from NO_FLOAT_MODEL"
        assert op not in HANDLERS, f"{op} has a handler: remove it from NO_FLOAT_MODEL"
        assert "SPEC" not in reason and len(reason) > 20
