"""`lipgraph bound MODEL`: the network bound and the per-node table."""

from __future__ import annotations

import click

from lipgraph.report import check_output_path, write_atomic


@click.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--input", "input_name", metavar="NAME", help="The graph input to certify (when there are several).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("-o", "--output", "output", type=click.Path(path_type=str), help="Write the report here.")
def bound(model: str, input_name: str | None, fmt: str, output: str | None) -> int:
    """Print a sound upper bound of MODEL's L2 Lipschitz constant (input -> logits)."""
    from lipgraph.analyze import analyze
    from lipgraph.report.bound import RENDERERS

    if output:
        check_output_path(output)
    analysis = analyze(model, input_name=input_name)
    text = RENDERERS[fmt](analysis)
    if output:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)
    return 0
