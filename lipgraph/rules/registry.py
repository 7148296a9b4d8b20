"""The rule registry: one bound rule per ``(domain, op_type, since_version)``.

A rule is a pure function of the node (attributes, constant inputs, shapes) and the Lipschitz
bounds of its variable inputs. It returns a :class:`Bound` or raises :class:`~lipgraph.errors.Refuse`.
Versions resolve like ONNX itself: the rule with the largest ``since`` not above the model's opset.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# LIPGRAPH_DOMAIN, Bound and RuleContext are re-exported: rules name them through the registry.
from lipgraph.domains import DEFAULT_DOMAIN, normalize_domain
from lipgraph.domains import LIPGRAPH_DOMAIN as LIPGRAPH_DOMAIN
from lipgraph.rules.context import Bound as Bound
from lipgraph.rules.context import RuleContext as RuleContext
from lipgraph.rules.shapes import elementwise_copies

RuleFn = Callable[[RuleContext], Bound]


@dataclass(frozen=True)
class RuleSpec:
    domain: str
    op_type: str
    since: int
    family: str
    fn: RuleFn
    broadcasts: bool = False

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")

    @property
    def summary(self) -> str:
        return self.doc.splitlines()[0] if self.doc else ""

    @property
    def always_refuses(self) -> bool:
        """True for a rule that can only refuse: its function has no ``return`` (a rule that bounds
        must return a :class:`Bound`), e.g. the rule of Exp or of the comparisons."""
        return _never_returns(self.fn)

    def refusal_reason(self) -> str:
        """For a rule that always refuses: its reason for this op (the summary when it needs a real node)."""
        from types import SimpleNamespace

        from lipgraph.errors import Refuse

        node = SimpleNamespace(
            op_type=self.op_type, domain=self.domain, opset=self.since, name="", attrs={}, inputs=[], outputs=[]
        )
        try:
            self.fn(RuleContext(node, None, [1.0]))  # type: ignore[arg-type]
        except Refuse as r:
            return r.reason
        except Exception:  # noqa: BLE001 - the reason needs more of a node than a listing has
            pass
        return self.summary


def _never_returns(fn: Callable[..., Any]) -> bool:
    import ast
    import textwrap

    try:
        # unwrap: a registry may wrap rules (functools.wraps); the rule's own body decides
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
    except (OSError, TypeError, SyntaxError):
        return False  # source unavailable: do not claim a refusal we cannot see
    func = tree.body[0]
    return not any(isinstance(n, ast.Return) for n in ast.walk(func))


class DuplicateRuleError(RuntimeError):
    pass


_REGISTRY: dict[tuple[str, str], dict[int, RuleSpec]] = {}


def rule(
    *op_types: str, domain: str = DEFAULT_DOMAIN, since: int = 1, broadcasts: bool = False
) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as the bound rule of each of ``op_types`` from opset ``since`` on.

    ``broadcasts=True`` marks an op that broadcasts its inputs together (numpy rules) while ``fn``
    bounds it per element of its one variable input, as if unary (PRelu's slope, Pow's exponent,
    Clip's limits). A constant operand larger than that input copies each of its elements into
    several outputs; the registered rule then multiplies ``fn``'s bound by ``sqrt(copies)``
    (:func:`lipgraph.rules.shapes.elementwise_copies`), in this one place for every such rule.
    """

    def deco(fn: RuleFn) -> RuleFn:
        if not fn.__doc__:
            raise ValueError(f"rule {fn.__name__} needs a docstring (what, how, how tight, source)")
        family = fn.__module__.rsplit(".", 1)[-1]
        bound_fn = _with_broadcast_copies(fn) if broadcasts else fn
        for op in op_types:
            key = (normalize_domain(domain), op)
            versions = _REGISTRY.setdefault(key, {})
            if since in versions:
                raise DuplicateRuleError(f"rule for {key[0]}:{op} since {since} registered twice")
            versions[since] = RuleSpec(key[0], op, since, family, bound_fn, broadcasts)
        return fn

    return deco


def _with_broadcast_copies(fn: RuleFn) -> RuleFn:
    """``fn`` followed by the factor ``sqrt(k)``, k the copies broadcasting makes of the variable input."""

    @functools.wraps(fn)
    def bounded(ctx: RuleContext) -> Bound:
        result = fn(ctx)
        var = ctx.variable_indices()
        if len(var) != 1:
            return result  # a rule that accepts several variable inputs accounts for them itself
        k = elementwise_copies(ctx, var[0])
        if k == 1:
            return result
        s = math.sqrt(k)
        outs = result.outputs
        scaled: float | list[float] = (
            float(outs) * s if isinstance(outs, int | float | np.floating) else [float(v) * s for v in outs]
        )
        return Bound(
            scaled,
            f"{result.method}, broadcast x{k}",
            factor=None if result.factor is None else result.factor * s,
            lower=None,  # the per-element lower estimate times sqrt(k) need not be below the truth
            warnings=list(result.warnings),
        )

    return bounded


def lookup(domain: str, op_type: str, opset: int) -> RuleSpec | None:
    _ensure_loaded()
    versions = _REGISTRY.get((normalize_domain(domain), op_type))
    if not versions:
        return None
    usable = [v for v in versions if v <= opset]
    return versions[max(usable)] if usable else None


def all_rules() -> list[RuleSpec]:
    _ensure_loaded()
    return sorted(
        (spec for versions in _REGISTRY.values() for spec in versions.values()),
        key=lambda s: (s.family, s.domain, s.op_type, s.since),
    )


def rules_for(op_type: str) -> list[RuleSpec]:
    _ensure_loaded()
    return [s for s in all_rules() if s.op_type.lower() == op_type.lower()]


def _ensure_loaded() -> None:
    from lipgraph.rules import load_rules

    load_rules()
