"""`lipgraph rules` and `lipgraph rule OP`: the supported ops and how each is bounded."""

from __future__ import annotations

import click

from lipgraph.errors import LipgraphError


@click.command()
def rules() -> int:
    """List the ops lipgraph bounds (by family, with each rule's summary), then the ops it always refuses."""
    from lipgraph.report.tables import text_table
    from lipgraph.rules.registry import all_rules

    specs = all_rules()
    bounded = [[s.family, f"{s.domain}:{s.op_type}", str(s.since), s.summary] for s in specs if not s.always_refuses]
    refused = [[f"{s.domain}:{s.op_type}", str(s.since), s.refusal_reason()] for s in specs if s.always_refuses]
    click.echo(f"Bounded ops ({len(bounded)}); some refuse particular settings, see `lipgraph rule OP`:\n")
    click.echo(text_table(["family", "op", "since", "bound"], bounded), nl=False)
    click.echo(f"\nRefused ops ({len(refused)}): no sound Lipschitz bound exists for them:\n")
    click.echo(text_table(["op", "since", "why"], refused), nl=False)
    return 0


@click.command()
@click.argument("op")
def rule(op: str) -> int:
    """Show the full rule for OP (what it bounds, how, how tight, source)."""
    from lipgraph.rules.registry import rules_for

    specs = rules_for(op)
    if not specs:
        raise LipgraphError(f"no rule for op '{op}'; `lipgraph rules` lists the supported ops")
    for s in specs:
        click.echo(f"{s.domain}:{s.op_type} (since opset {s.since}, family {s.family})\n")
        click.echo(s.doc + "\n")
    return 0
