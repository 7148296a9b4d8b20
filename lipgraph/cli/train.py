"""`lipgraph train`: train a Lipschitz-aware classifier and export it to ONNX (needs the torch extra)."""

from __future__ import annotations

import click

from lipgraph.errors import LipgraphError

TORCH_HINT = 'the trainer needs PyTorch: pip install torch==2.13.0 -e ".[torch]"'


@click.command("train")
@click.option("--dataset", default="digits", show_default=True, help="'digits' (scikit-learn) or an .npz path.")
@click.option("--arch", default="mlp", show_default=True,
              help="mlp | mlp-wide | mlp-WxD (e.g. mlp-512x3) | cnn | aol-cnn (AOL convs + MaxMin, 1-Lipschitz)")
@click.option("--method", default="lmt", show_default=True, help="plain | lmt | groupsort | awp | lmt+awp")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1))
@click.option("--c", "c", default=1.0, show_default=True, type=float, help="LMT: radius the guard aims at.")
@click.option("--eps", default=0.5, show_default=True, type=float,
              help="Training radius: hinge margin (groupsort), PGD radius (awp), progress figure.")
@click.option("--gamma", default=0.01, show_default=True, type=float, help="AWP relative weight perturbation.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--attack-norm", default="l2", show_default=True, type=click.Choice(["l2", "linf"]))
@click.option("--pgd-steps", default=10, show_default=True, type=click.IntRange(0))
@click.option("--awp-warmup", default=0, show_default=True, type=click.IntRange(0))
@click.option("--c-ramp-epochs", default=5, show_default=True, type=click.IntRange(0))
@click.option("--bjorck-iters", default=10, show_default=True, type=click.IntRange(1))
@click.option("--lr-schedule", default="constant", show_default=True,
              type=click.Choice(["constant", "cosine", "onecycle"]), help="Per-step learning-rate schedule.")
@click.option("--gs-loss", default="hinge", show_default=True, type=click.Choice(["hinge", "margin-ce"]),
              help="groupsort loss: multi-class hinge with margin sqrt2*eps, or tau-CE with that margin.")
@click.option("--tau", default=4.0, show_default=True, type=float, help="margin-ce temperature.")
@click.option("--maxmin-export", default="split", show_default=True, type=click.Choice(["split", "prelu"]),
              help="How MaxMin is written to ONNX (same function).")
@click.option("--legacy-exporter", is_flag=True, help="Use torch.onnx.export(dynamo=False).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: CUDA when PyTorch sees a GPU, else the CPU. Float32 throughout (no AMP, no TF32).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(0), help="torch threads (0: torch's).")
@click.option("--limit-train", default=None, type=click.IntRange(1), help="Use only the first N training samples.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Model file to write (.onnx).")
@click.option("--test-out", default=None, type=click.Path(dir_okay=False),
              help="Test split to write (default <model>.test.npz).")
@click.option("--attack-eval", is_flag=True,
              help="After training, PGD-L2 robust accuracy on the test split at --eps, printed beside the "
                   "certified accuracy (the certification gap) and recorded in the model's metadata; then "
                   "PGD inside every certified sample's own radius (it must flip none).")
@click.option("--attack-steps", default=50, show_default=True, type=click.IntRange(1),
              help="--attack-eval: PGD steps per random restart (2 restarts).")
@click.option("-q", "--quiet", "quiet", is_flag=True, help="No progress bar and no per-epoch lines.")
def train(dataset: str, arch: str, method: str, epochs: int, c: float, eps: float, gamma: float, seed: int,
          lr: float, batch_size: int, attack_norm: str, pgd_steps: int, awp_warmup: int, c_ramp_epochs: int,
          bjorck_iters: int, lr_schedule: str, gs_loss: str, tau: float,
          maxmin_export: str, legacy_exporter: bool, device: str, threads: int, limit_train: int | None,
          out: str, test_out: str | None, attack_eval: bool, attack_steps: int, quiet: bool) -> None:
    """Train a Lipschitz-aware classifier (LMT, GroupSort, AWP) and export it to ONNX.

    Progress goes to stderr; the model and its test split (x, y) are written atomically. The
    trainer's bound is an estimate: `lipgraph certify MODEL --data TEST.npz` gives the certificate.
    """
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise LipgraphError(TORCH_HINT) from exc
    from lipgraph.cli.outputs import quiet_requested
    from lipgraph.numbers import round_down, round_up
    from lipgraph.report import check_output_path
    from lipgraph.train.attack_eval import AttackConfig
    from lipgraph.train.loop import TrainConfig
    from lipgraph.train.pipeline import run

    check_output_path(out)
    if test_out:
        check_output_path(test_out)
    cfg = TrainConfig(arch=arch, method=method, epochs=epochs, c=c, eps=eps, gamma=gamma, awp_warmup=awp_warmup,
                      attack_norm=attack_norm, pgd_steps=pgd_steps, c_ramp_epochs=c_ramp_epochs, lr=lr,
                      batch_size=batch_size, bjorck_iters=bjorck_iters, lr_schedule=lr_schedule, gs_loss=gs_loss,
                      tau=tau, seed=seed, device=device, progress=not quiet_requested(quiet))
    if not cfg.progress:
        cfg.log = _silent
    res = run(cfg, dataset, out, test_out, legacy_exporter=legacy_exporter, maxmin_export=maxmin_export,
              threads=threads or None, limit_train=limit_train, certify_eps=[eps],
              attack=AttackConfig(steps=attack_steps, seed=seed) if attack_eval else None)
    if res.rank != 0:  # under torchrun, rank 0 exports and reports
        return
    lines = [f"wrote {res.model_path} and {res.test_path} ({res.seconds:.1f}s training)",
             f"trainer's bound estimate {res.trainer_bound:.8g}"]
    if res.analyzer_bound is not None:
        lines.append(f"analyzer's bound {round_up(res.analyzer_bound, 8)}")
    if res.certificate:
        ce = res.certificate
        cert_at = next(iter(ce["certified_accuracy"].values()), float("nan"))
        # accuracies and radii rounded down, the bound up: printed numbers never claim more than was proved
        lines.append(f"test: clean {round_down(ce['clean_accuracy'])}, certified@{eps:g} {round_down(cert_at)}, "
                     f"median radius {round_down(ce['median_radius'])} ({ce['radius_method']})")
        if res.robust_accuracy:
            rob_at = next(iter(res.robust_accuracy.values()))
            # PGD's robust accuracy is an upper estimate (an attack may miss), the certified one a lower bound
            lines.append(f"test: PGD-L2 robust@{eps:g} {rob_at:.4f} vs certified@{eps:g} {round_down(cert_at)} "
                         f"(certification gap {max(0.0, rob_at - cert_at):.4f})")
        if res.radius_check:
            rc = res.radius_check
            # a flip inside a certified radius would disprove the certificate: say so loudly
            verdict = "none flipped" if rc["flipped"] == 0 else "CERTIFICATE CONTRADICTED, please report"
            lines.append(f"test: PGD-L2 inside each certified radius: {rc['flipped']} of {rc['attacked']} "
                         f"samples flipped ({verdict})")
    lines.append(f"certify with: lipgraph certify {res.model_path} --data {res.test_path} --eps {eps:g}")
    for ln in lines:
        click.echo(ln, err=True)


def _silent(_line: str) -> None:
    """The epoch log under --quiet."""
