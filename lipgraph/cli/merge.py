"""`lipgraph merge part*.json -o report.json`: combine the partial reports of `certify --shard K/N`."""

from __future__ import annotations

import click

from lipgraph.cli.outputs import FORMATS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=str), metavar="PART.json...")
@click.option(
    "--min-certified-accuracy",
    "min_cert",
    multiple=True,
    metavar="EPS=ACC",
    help="Gate: certified accuracy at EPS must be at least ACC (repeatable).",
)
@click.option("--min-clean-accuracy", "min_clean", type=float, metavar="ACC", help="Gate: clean accuracy >= ACC.")
@click.option("--max-lipschitz", "max_lip", type=float, metavar="L", help="Gate: Lipschitz bound <= L.")
@click.option(
    "--baseline",
    "baseline",
    type=click.Path(path_type=str),
    metavar="OLD.json",
    help="An earlier JSON report; fail when certified accuracy drops by more than --max-drop.",
)
@click.option("--max-drop", "max_drop", type=float, metavar="D", help="Largest allowed drop against --baseline.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), multiple=True,
              help="Report format (default text). Repeat it with one -o FILE each, in order.")
@click.option("-o", "--output", "output", multiple=True, metavar="[FORMAT=]PATH",
              help="Write a report here: FORMAT=PATH (repeatable) or a PATH for the --format given.")
@click.option("--config", "config", type=click.Path(path_type=str), metavar="PYPROJECT.toml",
              help="Read [tool.lipgraph] from this file instead of searching for one.")
@click.option("--no-config", "no_config", is_flag=True, help="Ignore every pyproject.toml (flags only).")
@click.option("--per-sample", "per_sample", is_flag=True, help="Add per-sample radii to the JSON report.")
@click.option("--exit-zero", "exit_zero", is_flag=True, help="Exit 0 even when a gate fails.")
@click.option("-q", "--quiet", "quiet", is_flag=True, help="No verdict line on stderr.")
def merge(
    parts: tuple[str, ...],
    min_cert: tuple[str, ...],
    min_clean: float | None,
    max_lip: float | None,
    baseline: str | None,
    max_drop: float | None,
    fmt: tuple[str, ...],
    output: tuple[str, ...],
    config: str | None,
    no_config: bool,
    per_sample: bool,
    exit_zero: bool,
    quiet: bool,
) -> int:
    """Merge the partial reports of every shard into one report (exactly a single run's), then apply the
    gates (flags, or [tool.lipgraph] in pyproject.toml). Exit 0 when every gate passes, 1 when one fails."""
    from lipgraph import gates as g
    from lipgraph.cli import outputs as out
    from lipgraph.config import resolve_config
    from lipgraph.merge import merge_partials, read_partial

    quiet = out.quiet_requested(quiet)
    plan = out.plan_outputs(fmt, output)  # every output problem is reported before any work
    flags = g.flag_config(min_cert, min_clean, max_lip, baseline, max_drop)
    cfg = g.merge(resolve_config(config, no_config), flags)
    base = g.load_baseline(cfg.baseline) if cfg.baseline else None
    docs = [read_partial(p) for p in parts]
    if docs:
        g.check_labels(cfg, bool(docs[0].get("has_labels")), docs[0]["_path"])
    cert = merge_partials(docs, list(cfg.eps or []) + g.required_eps(cfg, base))
    cert.per_sample = per_sample
    cert.meta["config"] = cfg.source  # None: no [tool.lipgraph] was read
    g.apply(cert, cfg, base)
    out.emit(plan, cert)
    if not quiet:
        click.echo(out.verdict_line(cert.to_json(per_sample=False)), err=True)
    return 0 if (cert.passed or exit_zero) else 1
