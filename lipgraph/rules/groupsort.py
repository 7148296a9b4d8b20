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
    docs/operators.md "GroupSort and MaxMin".
    """
    _, lin = ctx.single_variable_input()
    group = ctx.attr("group", 2)
    return Bound(lin, f"sorting unit (group {group}), 1-Lipschitz", factor=1.0)


@rule("CReLU", domain=LIPGRAPH_DOMAIN)
def crelu(ctx: RuleContext) -> Bound:
    """CReLU ``concat(relu(x), relu(-x))``: 1 (exact).

    Per element t, the pair ``(relu(t), relu(-t))`` moves by ``|t - t'|`` when t, t' share a sign
    and by ``sqrt(t^2 + t'^2) <= |t - t'|`` otherwise; the concat is a layout. The generic rules
    would give ``sqrt(2)``. Source: docs/operators.md (deel-torchlip's ``MaxMin`` is this CReLU).
    """
    _, lin = ctx.single_variable_input()
    return Bound(lin, "CReLU, 1-Lipschitz", factor=1.0)


# Suprema of |f'| rounded up in the 4th decimal (docs/operators.md; checked on a dense grid in
# tests/passes/test_activation_patterns.py).
SILU_SUP = 1.0999
GELU_SUP = 1.1290
MISH_SUP = 1.0886


@rule("Silu", "Mish", domain=LIPGRAPH_DOMAIN)
def smooth_gate(ctx: RuleContext) -> Bound:
    """SiLU ``x sigmoid(x)``: 1.0999; Mish ``x tanh(softplus(x))``: 1.0886 (``sup |f'|``, rounded up).

    Fused by lipgraph/passes/activation_patterns.py from torch's primitive-op exports (the product
    ``x * s(x)`` alone has no global bound). SiLU's slope peaks at x ~ 2.40 with 1.09984; Mish's at
    x ~ 1.49 with 1.08850. Source: docs/operators.md "Activations"
    """
    _, lin = ctx.single_variable_input()
    c = SILU_SUP if ctx.node.op_type == "Silu" else MISH_SUP
    return Bound(c * lin, "elementwise, sup |f'| rounded up", factor=c)


@rule("Gelu", domain=LIPGRAPH_DOMAIN)
def gelu_erf(ctx: RuleContext) -> Bound:
    """GELU written ``a x (1 + erf(x / c))``: ``|2a| * 1.1290`` (1.1290 for torch's a = 1/2).

    ``f'(x) = a (1 + erf(u) + 2 u exp(-u^2) / sqrt(pi))`` with ``u = x/c``, so the supremum does not
    depend on c; for a = 1/2 it is 1.128904 at u = 1 (rounded up). The pass stores ``scale = 2a``.
    With ``approximate = "tanh"`` (``a x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, torch's float32 or
    float64 constants only; lipgraph/passes/elementwise_patterns.py) the supremum is 1.128993 for
    a = 1/2 (at x ~ 1.4185), also below 1.1290.
    Source: docs/operators.md "Activations".
    """
    _, lin = ctx.single_variable_input()
    c = abs(float(ctx.attr("scale", 1.0))) * GELU_SUP
    return Bound(c * lin, "GELU (erf form), sup |f'| rounded up", factor=c)
