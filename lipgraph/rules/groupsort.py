"""Rules for the fused sorting units made by lipgraph/passes/groupsort.py (domain ``lipgraph``)."""

from __future__ import annotations

from lipgraph.rules.registry import LIPGRAPH_DOMAIN, Bound, RuleContext, rule


@rule("GroupSort", "MaxMin", "PairSort", domain=LIPGRAPH_DOMAIN)
def sorting_unit(ctx: RuleContext) -> Bound:
    """GroupSort / MaxMin / PairSort units: 1 (exact when two elements of a group can swap).

    The pass fuses a subgraph only after checking it sorts disjoint groups of one tensor and lays
    the result out again (Reshape/Concat are isometries). Sorting each group is a piecewise
    permutation, continuous across the pieces, so it is 1-Lipschitz in L2: ``L_y = L_u``.
    Source: Anil, Lucas, Grosse, "Sorting out Lipschitz function approximation", ICML 2019;
    SPEC sec. 4 "GroupSort and MaxMin".
    """
    _, lin = ctx.single_variable_input()
    group = ctx.attr("group", 2)
    return Bound(lin, f"sorting unit (group {group}), 1-Lipschitz", factor=1.0)


@rule("CReLU", domain=LIPGRAPH_DOMAIN)
def crelu(ctx: RuleContext) -> Bound:
    """CReLU ``concat(relu(x), relu(-x))``: 1 (exact).

    Per element t, the pair ``(relu(t), relu(-t))`` moves by ``|t - t'|`` when t, t' share a sign
    and by ``sqrt(t^2 + t'^2) <= |t - t'|`` otherwise; the concat is a layout. The generic rules
    would give ``sqrt(2)``. Source: SPEC sec. 4 (deel-torchlip's ``MaxMin`` is this CReLU).
    """
    _, lin = ctx.single_variable_input()
    return Bound(lin, "CReLU, 1-Lipschitz", factor=1.0)
