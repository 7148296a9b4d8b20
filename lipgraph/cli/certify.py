"""`lipgraph certify MODEL --data DATA.npz`: certified radii, certified accuracy, CI gates."""

from __future__ import annotations

import click

from lipgraph.certify import DEFAULT_EPS
from lipgraph.cli.outputs import FORMATS
from lipgraph.errors import LipgraphError


def _eps_cb(_ctx: click.Context, _param: click.Parameter, values: tuple[float, ...]) -> tuple[float, ...]:
    for v in values:
        if not v >= 0 or v == float("inf"):
            raise click.BadParameter(f"eps must be a finite number >= 0, got {v}")
    return values


def _tight_pairs_cb(value: str) -> str:
    from lipgraph.pairs import parse_mode

    try:
        parse_mode(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--data", "data", required=True, type=click.Path(path_type=str), metavar="DATA.npz",
              help="Inputs under x / inputs / images / x_test; optional labels under y / labels / y_test.")
@click.option("--eps", "eps", multiple=True, type=float, callback=_eps_cb, metavar="EPS",
              help="L2 radius at which to report certified accuracy (repeatable; default: "
                   + ", ".join(f"{e:g}" for e in DEFAULT_EPS) + ").")
@click.option("--min-certified-accuracy", "min_cert", multiple=True, metavar="EPS=ACC",
              help="Gate: certified accuracy at EPS must be at least ACC (repeatable).")
@click.option("--min-clean-accuracy", "min_clean", type=float, metavar="ACC", help="Gate: clean accuracy >= ACC.")
@click.option("--max-lipschitz", "max_lip", type=float, metavar="L", help="Gate: Lipschitz bound <= L.")
@click.option("--baseline", "baseline", type=click.Path(path_type=str), metavar="OLD.json",
              help="An earlier JSON report; fail when certified accuracy drops by more than --max-drop.")
@click.option("--max-drop", "max_drop", type=float, metavar="D",
              help="Largest allowed drop in certified accuracy against --baseline (default 0).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), multiple=True,
              help="Report format (default text). Repeat it with one -o FILE each, in order.")
@click.option("-o", "--output", "output", multiple=True, metavar="[FORMAT=]PATH",
              help="Write a report here: FORMAT=PATH (repeatable, e.g. -o json=r.json -o sarif=r.sarif), or a "
                   "PATH for the --format given. All are written from one run, together.")
@click.option("--config", "config", type=click.Path(path_type=str), metavar="PYPROJECT.toml",
              help="Read [tool.lipgraph] from this file instead of searching for one.")
@click.option("--no-config", "no_config", is_flag=True, help="Ignore every pyproject.toml (flags only).")
@click.option("--batch-size", "batch_size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--providers", "providers", metavar="LIST",
              help="auto (default: CUDA when it works, else CPU with a warning) or ONNX Runtime providers in "
                   "order, e.g. cuda,cpu (CUDA then required: exit 2 when it cannot be used).")
@click.option("--allow-tf32", "allow_tf32", is_flag=True,
              help="Let CUDA use TF32 (faster, smaller radii); refused unless the float allowance covers it.")
@click.option("--limit", "limit", type=click.IntRange(min=1), metavar="N", help="Use only the first N samples.")
@click.option("--input", "input_name", metavar="NAME", help="The graph input to certify (when there are several).")
@click.option("--tight-pairs", "tight_pairs", default="auto", show_default=True, metavar="auto|all|off|SECONDS",
              callback=lambda _c, _p, v: _tight_pairs_cb(v),
              help="Per-class-pair whole-network bounds for chains of affine layers and ReLU-like activations "
                   "(verified LipSDP-neuron multipliers): auto tightens the pairs that decide some sample, all "
                   "every pair (what --shard uses, so parts merge exactly); SECONDS bounds the time spent.")
@click.option("--local-bounds", "local_bounds", default="auto", show_default=True,
              type=click.Choice(["auto", "all", "off"], case_sensitive=False),
              help="Per-sample bounds for chains of affine layers and ReLU / LeakyReLU: check the eps grid sample "
                   "by sample with linear bound propagation over the L2 ball (CROWN). auto: where it costs little "
                   "per sample (MLPs, small CNNs); all: on every such chain (an MNIST CNN: ~0.15 s per sample and "
                   "eps); off keeps the Lipschitz radii.")
@click.option("--radius-steps", "radius_steps", default=None, type=click.IntRange(min=0), metavar="N",
              help="--local-bounds: steps per sample between the largest verified eps and the first that failed, so "
                   "that radii are not grid values (each step costs one more bound; 0: grid values only).  "
                   "[default: 2]")
@click.option("--per-sample", "per_sample", is_flag=True, help="Add per-sample radii to the JSON report.")
@click.option("--bound", "bound_file", type=click.Path(path_type=str), metavar="BOUND.json",
              help="Reuse `lipgraph bound -o BOUND.json` (checked against the model's sha256 and the data's shape).")
@click.option("--shard", "shard", metavar="K/N",
              help="Certify every N-th batch starting with batch K; write a partial JSON report for `lipgraph merge`.")
@click.option("--exit-zero", "exit_zero", is_flag=True, help="Exit 0 even when a gate fails.")
@click.option("-q", "--quiet", "quiet", is_flag=True, help="No progress bar and no verdict line on stderr.")
def certify(model: str, data: str, eps: tuple[float, ...], min_cert: tuple[str, ...], min_clean: float | None,
            max_lip: float | None, baseline: str | None, max_drop: float | None, fmt: tuple[str, ...],
            output: tuple[str, ...], config: str | None, no_config: bool, batch_size: int, providers: str | None,
            allow_tf32: bool, limit: int | None, input_name: str | None, tight_pairs: str,
            per_sample: bool, exit_zero: bool, quiet: bool, bound_file: str | None = None,
            shard: str | None = None, local_bounds: str = "auto", radius_steps: int | None = None) -> int:
    """Certify MODEL on DATA: radii, certified accuracy at each --eps, and CI gates.

    Exit code 0 when every gate passes, 1 when a gate fails, 2 on an error; the verdict is always
    one line on stderr (unless --quiet). Gates may also come from [tool.lipgraph] in the nearest
    pyproject.toml that has that table, searched from the working directory up (keys: eps,
    min-certified-accuracy = {"0.5" = 0.8}, min-clean-accuracy, max-lipschitz, baseline,
    max-drop); flags override them. The file used is printed in the report.
    """
    import time

    from lipgraph import gates as g
    from lipgraph.certify import certify as run_certify
    from lipgraph.cli import outputs as out
    from lipgraph.config import resolve_config
    from lipgraph.errors import UnsupportedModelError
    from lipgraph.inference import resolve_providers
    from lipgraph.progress import inference_progress
    from lipgraph.stream import Shard, open_data

    t0 = time.perf_counter()
    quiet = out.quiet_requested(quiet)
    # Everything that can be checked cheaply is checked before the work starts.
    plan = out.plan_outputs(fmt, output)
    resolve_providers(providers)  # an unknown or missing provider is refused before any work
    precision = "tf32" if allow_tf32 else "fp32"
    if allow_tf32:
        from lipgraph.providers import tf32_operand_roundoff

        tf32_operand_roundoff()  # refuses when the float allowance cannot cover TF32
    flags = g.flag_config(min_cert, min_clean, max_lip, baseline, max_drop, eps)
    cfg = g.merge(resolve_config(config, no_config), flags)
    base = g.load_baseline(cfg.baseline) if cfg.baseline else None
    shard_spec = Shard.parse(shard) if shard else None
    if shard_spec is not None and flags.any_gate():
        # A part applies no gates (they need every part), so gate flags here would be dropped silently and
        # the part would exit 0; [tool.lipgraph] gates are fine: `lipgraph merge` reads the same file.
        raise LipgraphError("--shard writes a partial report and applies no gates: give the gate flags to "
                            "`lipgraph merge` (or put them in [tool.lipgraph])")
    if shard_spec is not None and str(tight_pairs).strip().lower() == "auto":
        # "auto" tightens the pairs that decide this part's samples: the parts would not merge into one
        # run's result. Every pair, whatever the samples, gives the same bounds in every part.
        tight_pairs = "all"
    if shard_spec is not None and (len(plan) > 1 or plan[0].fmt not in ("json", "text")):
        raise LipgraphError("--shard writes one partial JSON report: give at most one -o PATH (no other format)")
    dataset = open_data(data, limit=limit, shard=shard_spec, block=batch_size)  # streamed, never read whole
    analysis = _reuse_bound(model, bound_file, input_name, dataset) if bound_file else None
    g.check_labels(cfg, dataset.y is not None, data)  # accuracy gates on unlabeled data would measure nothing
    eps_grid = list(cfg.eps or DEFAULT_EPS) + g.required_eps(cfg, base)

    # the bound is computed beside the inference (lipgraph.certify.certify)
    try:
        cert = run_certify(model, dataset.x, dataset.y, eps_grid, input_name=input_name, batch_size=batch_size,
                           providers=providers, precision=precision, per_sample=per_sample,
                           progress=inference_progress(quiet), source=dataset.source, tight_pairs=tight_pairs,
                           analysis=analysis, local_bounds=local_bounds, radius_steps=radius_steps)
    except UnsupportedModelError as exc:
        # the formats that carry findings report each refused node (the others stay unwritten)
        from lipgraph.report.findings import refusal_report

        out.emit(plan, refusal_report(model, exc.refusals), only=out.FINDING_FORMATS)
        raise
    cert.meta["data"]["x_key"] = dataset.x_key
    cert.meta["data"]["y_key"] = dataset.y_key
    cert.meta["config"] = cfg.source  # None: no [tool.lipgraph] was read
    if shard_spec is not None:  # a part: no gates until `lipgraph merge` has every part
        import json

        from lipgraph.merge import partial_report
        from lipgraph.report import write_atomic

        doc = partial_report(cert, dataset.x.global_indices(), (shard_spec.index, shard_spec.count), batch_size,
                             dataset.total)
        text = json.dumps(doc, allow_nan=True) + "\n"
        paths = [o.path for o in plan if o.path is not None]
        if paths:
            write_atomic(paths[0], text)
        else:
            click.echo(text, nl=False)
        return 0
    g.apply(cert, cfg, base)
    cert.meta["time_total_s"] = round(time.perf_counter() - t0, 4)
    out.emit(plan, cert)
    if not quiet:
        click.echo(out.verdict_line(cert.to_json(per_sample=False)), err=True)
    return 0 if (cert.passed or exit_zero) else 1


def _reuse_bound(model: str, path: str, input_name: str | None, dataset: object):  # noqa: ANN202
    """The analysis stored by `lipgraph bound -o`, checked against this model and data."""
    from lipgraph.bound_file import check_input_shape, fitted_sample_shape, load_bound
    from lipgraph.loader import load_model

    proto, sha = load_model(model)
    analysis = load_bound(path, proto, sha, input_name)
    shape = fitted_sample_shape(proto, analysis.input_name, dataset.x, dataset.source)  # type: ignore[attr-defined]
    check_input_shape(analysis, shape, path)
    return analysis
