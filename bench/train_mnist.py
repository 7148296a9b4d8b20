"""Trainer benchmark: MNIST (or digits) with lmt, groupsort and lmt+awp; certified accuracy by lipgraph.

For each method: train with `lipgraph.train` on 2 CPU cores, export to ONNX, then `lipgraph.certify`
the held-out test split (sound bound from the analyzer, never the trainer's estimate). Reports clean
accuracy, certified accuracy at each eps (L2, pixels in [0, 1]), median radius, the analyzer's and the
trainer's bounds and wall time; writes bench/results/train_mnist.json (or --json).

Target (issue 4): some method reaches >= 45% certified at eps 1.58 with >= 95% clean within 30 minutes.
Exit code 1 when no method meets it (only checked on MNIST at full size).

    python bench/train_mnist.py                          # full: MNIST, 60k train, 10k test

MNIST groupsort recipe (the default): MaxMin MLP 784-512-512-512-10 with Björck layers (3 iterations
in training, pre-scaled by a power-iteration estimate; converged in float64 at export), margin
cross-entropy (tau 4, non-target logits raised by sqrt2*2.0: trained a bit above the 1.58 it is
evaluated at), Adam lr 5e-3 one-cycle, batch 1024, 20 epochs.
Large batches matter on a CPU: the Björck iterations cost the same per step whatever the batch.
Recipes of issue 14 (MNIST, 10,000 test images, eps 1.58; --attack-eval adds PGD-L2 robust accuracy and
PGD inside every certified radius, which must flip nothing; results/README rows from exactly these):
    # GroupSort MLP, long run (48 epochs): the best 1-Lipschitz recipe a 2-core CPU trains within the hour
    python bench/train_mnist.py --methods groupsort --gs-epochs 48 --attack-eval --no-awp-overhead \
        --json bench/results/train_mnist_gs_long.json
    # LMT on a ReLU MLP, certified with per-pair bounds (the exported last layer is centred)
    python bench/train_mnist.py --methods lmt --arch mlp-wide --epochs 15 --c 2.5 --c-ramp-epochs 3 \
        --batch-size 128 --lr 2e-3 --lr-schedule cosine --attack-eval --no-awp-overhead \
        --json bench/results/train_mnist_lmt.json
    # does AWP help LMT? the same recipe shortened to 8 epochs, with and without AWP, seeds 0/1/2
    python bench/train_mnist.py --methods lmt,lmt+awp --seeds 0,1,2 --arch mlp-wide --epochs 8 --c 2.5 \
        --c-ramp-epochs 3 --batch-size 128 --lr 2e-3 --lr-schedule cosine --no-awp-overhead \
        --json bench/results/train_mnist_lmt_awp.json
`--keep-models DIR` keeps each model and its test split for `lipgraph certify`.
    python bench/train_mnist.py --quick                  # smoke run: 1 epoch on 3000 images
    python bench/train_mnist.py --dataset digits --methods plain,lmt,groupsort,awp,lmt+awp \
        --eps 0.25 --eps 0.5 --eps 1.0 --epochs 30 --c 1.0 --hinge-eps 0.5 --json /tmp/digits.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"
GS_EPOCHS = 20  # groupsort on MNIST (probes: hinge 25 epochs 96.9/59.0 in 341 s; margin-ce 10 epochs 96.6/61.9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(DEFAULT_MNIST), help="an .npz (Keras layout) or 'digits'")
    ap.add_argument("--methods", default="lmt,groupsort,lmt+awp")
    ap.add_argument("--arch", default=None, help="one arch for all methods (default: cnn, groupsort mlp-512x3)")
    ap.add_argument("--epochs", type=int, default=None, help="default 10 (MNIST), 30 (digits)")
    ap.add_argument("--gs-epochs", type=int, default=None, help="groupsort epochs (default: --epochs, else GS_EPOCHS)")
    ap.add_argument("--gs-lr", type=float, default=None, help="groupsort Adam lr (default 5e-3 MNIST, 1e-3 digits)")
    ap.add_argument("--gs-schedule", default=None, help="groupsort lr schedule (default onecycle MNIST)")
    ap.add_argument("--gs-loss", default=None, help="groupsort loss: hinge | margin-ce (default on MNIST)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the other methods (lmt, awp, lmt+awp, plain)")
    ap.add_argument("--lr-schedule", default="constant", help="lr schedule of the other methods")
    ap.add_argument("--c-ramp-epochs", type=int, default=5, help="LMT: epochs over which c ramps up from 0")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds: every method once per seed (mean, spread)")
    ap.add_argument("--tau", type=float, default=4.0, help="margin-ce temperature")
    ap.add_argument("--eps", type=float, action="append", default=None, help="certify radii (default 1.58)")
    ap.add_argument("--c", type=float, default=None, help="LMT guard radius (default 2.0 MNIST, 1.0 digits)")
    ap.add_argument("--hinge-eps", type=float, default=None, help="groupsort margin radius (2.0 / 0.5)")
    ap.add_argument("--awp-eps", type=float, default=None, help="PGD radius for awp (default = hinge eps)")
    ap.add_argument("--gamma", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (1024 for groupsort on MNIST)")
    ap.add_argument("--bjorck-iters", type=int, default=None, help="training-time Björck iterations (10 / 3)")
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--limit-test", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest for these small models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-awp-overhead", action="store_true", help="skip the AWP-vs-PGD step timing")
    ap.add_argument("--attack-eval", action="store_true",
                    help="PGD-L2 robust accuracy at every --eps beside the certified one (rows' robust_accuracy)")
    ap.add_argument("--keep-models", default=None, metavar="DIR",
                    help="write each model (METHOD-sSEED.onnx) and the test split there, for `lipgraph certify`")
    ap.add_argument("--quick", action="store_true", help="1 epoch, 3000 train / 1000 test images")
    ap.add_argument("--fail-on-miss", action="store_true",
                    help="exit 1 when a full-size run meets neither target (for a scheduled check); by default the "
                         "table and JSON say which targets were met and the exit status is 0")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "train_mnist.json"))
    args = ap.parse_args(argv)

    import torch

    from lipgraph.train.attack_eval import AttackConfig
    from lipgraph.train.data import load
    from lipgraph.train.loop import TrainConfig
    from lipgraph.train.pipeline import run

    digits = args.dataset == "digits"
    if args.quick:
        args.epochs = args.epochs or 1
        args.limit_train = args.limit_train or 3000
        args.limit_test = args.limit_test or 1000
    epochs = args.epochs or (30 if digits else 10)
    eps_list = args.eps or ([0.25, 0.5, 1.0] if digits else [1.58])
    c = args.c if args.c is not None else (1.0 if digits else 2.0)
    hinge_eps = args.hinge_eps if args.hinge_eps is not None else (0.5 if digits else 2.0)
    awp_eps = args.awp_eps if args.awp_eps is not None else hinge_eps
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    if args.keep_models:
        os.makedirs(args.keep_models, exist_ok=True)

    rows = []
    epochs_by_method: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            args.seed = seed
            data = load(args.dataset, seed=seed, limit_train=args.limit_train, limit_test=args.limit_test)
            for method in args.methods.split(","):
                gs = method == "groupsort"
                arch = args.arch or ("mlp" if digits else ("mlp-512x3" if gs else "cnn"))
                ep = (args.gs_epochs or args.epochs or (epochs if digits else GS_EPOCHS)) if gs else epochs
                cfg = TrainConfig(arch=arch, method=method, epochs=ep, c=c,
                                  eps=hinge_eps if gs else (awp_eps if method == "awp" else c),
                                  gamma=args.gamma, seed=args.seed, pgd_steps=10 if method == "awp" else 0,
                                  batch_size=args.batch_size or (1024 if gs and not digits else 64),
                                  bjorck_iters=args.bjorck_iters or (10 if digits else 3),
                                  lr=(args.gs_lr or (1e-3 if digits else 5e-3)) if gs else args.lr,
                                  lr_schedule=(args.gs_schedule or ("constant" if digits else "onecycle"))
                                  if gs else args.lr_schedule, c_ramp_epochs=args.c_ramp_epochs,
                                  gs_loss=args.gs_loss or ("hinge" if digits else "margin-ce"), tau=args.tau,
                                  eval_eps=eps_list[0])
                epochs_by_method[method] = ep
                print(f"== {method} ({arch}, {ep} epochs, {len(data.x_train)} train images)", file=sys.stderr)
                t0 = time.perf_counter()
                model_path = os.path.join(args.keep_models or tmp, f"{method}-s{seed}.onnx")
                res = run(cfg, args.dataset, model_path, threads=args.threads, data=data,
                          certify_eps=eps_list, attack=AttackConfig(seed=args.seed) if args.attack_eval else None)
                wall = time.perf_counter() - t0
                ce = res.certificate or {}
                rows.append({
                    "method": method, "seed": seed, "arch": arch, "epochs": ep,
                    "hyperparameters": cfg.hyperparameters(),
                    "clean_accuracy": ce.get("clean_accuracy"),
                    "certified_accuracy": ce.get("certified_accuracy"),
                    "median_radius": ce.get("median_radius"), "radius_method": ce.get("radius_method"),
                    "robust_accuracy": res.robust_accuracy, "radius_check": res.radius_check,
                    "analyzer_bound": res.analyzer_bound, "trainer_bound": res.trainer_bound,
                    "train_seconds": round(res.seconds, 1), "wall_seconds": round(wall, 1),
                    "seconds_per_epoch": round(res.seconds / ep, 2), "warnings": res.warnings,
                    # per epoch: validation accuracy, the trainer's uncertified certified fraction at the first --eps
                    "history": [{"epoch": h.epoch, "val_acc": round(h.val_acc, 4),
                                 "val_cert_estimate": round(h.val_cert, 4), "seconds": round(h.seconds, 1)}
                                for h in res.history],
                })
    key = eps_list[0] if len(eps_list) == 1 else None
    print(f"\n{'method':10} {'arch':9} {'clean':>6} " + " ".join(f"{'cert@' + format(e, 'g'):>9}" for e in eps_list)
          + f" {'med.r':>6} {'L(anal.)':>9} {'L(train)':>9} {'s/ep':>6} {'wall s':>7}")
    for r in rows:
        ca = r["certified_accuracy"] or {}
        print(f"{r['method']:10} {r['arch']:9} {_f(r['clean_accuracy'])} "
              + " ".join(f"{_f(_cert(ca, e)):>9}" for e in eps_list)
              + f" {_f(r['median_radius'])} {_f(r['analyzer_bound'], 9)} {_f(r['trainer_bound'], 9)} "
              f"{r['seconds_per_epoch']:6.2f} {r['wall_seconds']:7.1f}")
        if r["robust_accuracy"]:
            print(f"{'':10} PGD-L2 robust: " + " ".join(f"@{e:g} {_f(_cert(r['robust_accuracy'], e))}"
                                                       for e in eps_list))
        if r["radius_check"]:
            rc = r["radius_check"]
            print(f"{'':10} PGD inside each certified radius: {rc['flipped']} flips of {rc['attacked']} attacked")
    full = not digits and not args.quick and args.limit_train is None and args.limit_test is None
    met = [r["method"] for r in rows if key and (_cert(r["certified_accuracy"] or {}, key) or 0) >= 0.45
           and (r["clean_accuracy"] or 0) >= 0.95 and r["wall_seconds"] <= 1800]
    overhead = None if args.no_awp_overhead else awp_overhead(data.in_shape, data.n_classes)
    if overhead:
        print(f"AWP step cost over PGD-10 adversarial training (cnn, batch 128): x{overhead['median_ratio']:.3f} "
              f"(rounds: {', '.join(f'{r:.3f}' for r in overhead['ratios'])})")
    summary = {"dataset": Path(args.dataset).name, "full_size": full, "epochs": epochs_by_method,
               "target": ">= 45% certified at 1.58 with >= 95% clean within 30 min",
               "target_met_by": ",".join(met) or None,
               "target_issue14": ">= 70% certified at 1.58 with >= 98% clean, <= 60 min of training on 2 CPU cores",
               "target_issue14_met_by": ",".join(r["method"] for r in rows if key and full
                                                 and (_cert(r["certified_accuracy"] or {}, key) or 0) >= 0.70
                                                 and (r["clean_accuracy"] or 0) >= 0.98
                                                 and r["train_seconds"] <= 3600) or None}
    summary.update(_by_method(rows, eps_list[-1], len(seeds) > 1))
    if overhead:
        summary["awp_over_pgd_step_cost"] = overhead["median_ratio"]
    out = {"benchmark": "train_mnist", "summary": summary, "rows": rows, "awp_overhead": overhead,
           "command": " ".join(["python", "bench/train_mnist.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                       "torch": torch.__version__}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    met14 = summary["target_issue14_met_by"]
    if full:
        print(f"targets: issue 4 (45% @1.58, 95% clean, 30 min) met by {summary['target_met_by'] or 'none'}; "
              f"issue 14 (70% @1.58, 98% clean, 60 min) met by {met14 or 'none'}")
    return 1 if (args.fail_on_miss and full and not met and not met14) else 0


def awp_overhead(in_shape: tuple[int, ...], n_classes: int, steps: int = 8, rounds: int = 3) -> dict:
    """Per-step time of PGD-10 adversarial training with and without AWP, interleaved rounds (median ratio).

    The target (issue 4) is AWP <= 1.2x plain PGD training. On a shared machine single rounds vary a lot.
    """
    import statistics

    import torch
    import torch.nn.functional as F

    from lipgraph.train.archs import build_model
    from lipgraph.train.awp import AWP
    from lipgraph.train.pgd import pgd

    torch.manual_seed(0)
    model = build_model("cnn", in_shape, n_classes, "plain")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    awp = AWP(model, 0.01)
    x, y = torch.rand(128, *in_shape), torch.randint(0, n_classes, (128,))

    def run(use: bool) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            xa = pgd(model, x, y, 0.5, "l2", 10)
            if use:
                awp.perturb(awp.calc(lambda m, xa=xa: F.cross_entropy(m(xa), y)))
            opt.zero_grad()
            F.cross_entropy(model(xa), y).backward()
            if use:
                awp.restore()
            opt.step()
        return (time.perf_counter() - t) / steps

    run(True)  # warm-up
    ratios = []
    for _ in range(rounds):
        base = run(False)
        ratios.append(run(True) / base)
    return {"ratios": ratios, "median_ratio": statistics.median(ratios), "steps": steps}


def _by_method(rows: list[dict], e: float, spread: bool) -> dict:
    """Each method's clean and certified accuracy at ``e``: the value, or over seeds mean, std and range."""
    import statistics

    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        for name, get in (("clean", lambda r: r["clean_accuracy"]),
                          (f"cert@{e:g}", lambda r: _cert(r["certified_accuracy"] or {}, e))):
            vals = [v for v in (get(r) for r in rows if r["method"] == method) if v is not None]
            if not vals:
                continue
            out[f"{method}_{name}"] = statistics.fmean(vals)
            if spread:
                out[f"{method}_{name}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
                out[f"{method}_{name}_range"] = [min(vals), max(vals)]
    return out


def _cert(ca: dict, e: float) -> float | None:
    """certify's keys are eps as strings ("1.0" or "1"): accept either."""
    for k in (str(float(e)), f"{e:g}", str(e)):
        if k in ca:
            return ca[k]
    return None


def _f(v, w: int = 6) -> str:
    return f"{v:{w}.4f}" if isinstance(v, int | float) and v is not None else f"{'-':>{w}}"


if __name__ == "__main__":
    sys.exit(main())
