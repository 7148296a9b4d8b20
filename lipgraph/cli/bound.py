"""`lipgraph bound MODEL`: the network bound and the per-node table."""

from __future__ import annotations

import click

from lipgraph.report import check_output_path, write_atomic


@click.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--input", "input_name", metavar="NAME", help="The graph input to certify (when there are several).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default=None,
              help="Report format [default: json when -o names a .json file, else text].")
@click.option("-o", "--output", "output", type=click.Path(path_type=str), help="Write the report here.")
@click.option("--input-shape", "input_shape", metavar="DxDx...",
              help="Fix the input's symbolic dimensions, e.g. 1x3x32x32 (the bound then holds for that size).")
@click.option("-q", "--quiet", "quiet", is_flag=True, help="No progress bar.")
def bound(model: str, input_name: str | None, fmt: str | None, output: str | None, input_shape: str | None,
          quiet: bool) -> int:
    """Print a sound upper bound of MODEL's L2 Lipschitz constant (input -> logits).

    `-o bound.json` keeps the analysis for `lipgraph certify MODEL --bound bound.json`."""
    from lipgraph.analyze import analyze
    from lipgraph.cli.outputs import quiet_requested
    from lipgraph.progress import inference_progress
    from lipgraph.report.bound import RENDERERS

    if output:
        check_output_path(output)
    if fmt is None:
        fmt = "json" if output and output.lower().endswith(".json") else "text"
    shape = _parse_shape(input_shape) if input_shape else None
    progress = inference_progress(quiet_requested(quiet), desc="bound", unit="node")  # per node, with ETA
    analysis = analyze(model, input_name=input_name, input_shape=shape, progress=progress)
    text = RENDERERS[fmt](analysis)
    if output:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)
    return 0


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a shape like 1x3x32x32", param_hint="--input-shape") from None
    if not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"'{text}' needs positive sizes, like 1x3x32x32", param_hint="--input-shape")
    return dims
