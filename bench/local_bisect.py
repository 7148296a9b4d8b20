"""Per-sample radii by bisection between grid points (--local-bounds, lipgraph.local_bisect): before and after.

Certifies the same model and data twice in one run, with the grid search alone (``BISECT_STEPS = 0``, as before)
and with the default bisection, and compares the median radius, certified accuracy at each eps, the local bounds'
time and the number of bound evaluations; then attacks every raised radius with L2 PGD (gradients from a torch copy
of the chain, every candidate point judged by ONNX Runtime in float32) and counts flips inside.

    nice -n 10 python bench/local_bisect.py [--model M.onnx --data M.test.npz] [--limit 1000]
        [--eps 0.25 0.5 1.0] [--out local_bisect.json]

Without ``--model`` the bench trains its own model first: a plain (no Lipschitz control) 784-128-128-10 ReLU MLP
(``lipgraph train`` arch ``mlp``, 3 epochs, seed 0, one thread, about a minute) on the MNIST file of
bench/train_mnist.py (``--dataset``), kept in ``--cache`` (default /tmp/lipgraph-bench) and reused by later runs.

Writes bench/results/<out>.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _pgd_flips(
    model_path: str, x: np.ndarray, y: np.ndarray, radii: np.ndarray, steps: int = 60, restarts: int = 3
) -> int:
    """Samples whose ONNX Runtime prediction changes at some PGD point strictly inside ``radii`` (float32 inputs).
    The gradient comes from the ONNX model converted to torch (bench/pairwise_vs_crown.onnx_to_torch); every
    candidate is checked by ONNX Runtime itself."""
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(HERE))
    from pairwise_vs_crown import onnx_to_torch

    net, _ = onnx_to_torch(Path(model_path))
    if net is None:
        raise SystemExit(f"{model_path} is not a chain the PGD helper can rebuild in torch")
    net = net.double()
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    flipped = np.zeros(len(x), dtype=bool)
    x0 = torch.from_numpy(x.astype(np.float64))
    t = torch.from_numpy(y.astype(np.int64))
    r = torch.from_numpy(radii.astype(np.float64)).reshape(-1, *[1] * (x.ndim - 1)) * 0.999
    gen = torch.Generator().manual_seed(0)
    for _ in range(restarts):
        d = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        d = d / d.flatten(1).norm(dim=1).reshape(r.shape) * r * 0.5
        for k in range(steps):
            d.requires_grad_(True)
            out = net(x0 + d)
            other = out.clone()
            other[torch.arange(len(t)), t] = -torch.inf
            loss = (other.max(dim=1).values - out[torch.arange(len(t)), t]).sum()
            (g,) = torch.autograd.grad(loss, d)
            with torch.no_grad():
                g = g / (g.flatten(1).norm(dim=1).reshape(r.shape) + 1e-30)
                d = d + r * (2.5 / steps) * g * (1.0 if k < steps // 2 else 0.5)
                norm = d.flatten(1).norm(dim=1).reshape(r.shape)
                d = d * torch.clamp(r / (norm + 1e-30), max=1.0)
            xa = (x0 + d).numpy().astype(np.float32)
            inside = np.linalg.norm((xa.astype(np.float64) - x).reshape(len(x), -1), axis=1) < radii
            pred = np.argmax(sess.run(None, {name: xa})[0], axis=1)
            flipped |= inside & (pred != y)
    return int(flipped.sum())


def own_model(dataset: str, cache: Path, epochs: int = 3) -> tuple[str, str]:
    """Train (once; later runs reuse the file) the bench's model: a plain 784-128-128-10 ReLU MLP on MNIST."""
    from lipgraph.train.loop import TrainConfig
    from lipgraph.train.pipeline import run

    cache.mkdir(parents=True, exist_ok=True)
    model = cache / f"local_bisect-mlp-plain-e{epochs}.onnx"
    test = model.with_suffix(".test.npz")
    if not (model.exists() and test.exists()):
        print(f"training the bench's model into {model} ...", file=sys.stderr)
        cfg = TrainConfig(arch="mlp", method="plain", epochs=epochs, seed=0)
        run(cfg, dataset, str(model), test_out=str(test), threads=1)
    return str(model), str(test)


def main() -> None:
    sys.path.insert(0, str(HERE))
    from train_mnist import DEFAULT_MNIST

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="an ONNX classifier (default: train the bench's own MLP)")
    ap.add_argument("--data", default=None, help="its test .npz (x, y); needed with --model")
    ap.add_argument("--dataset", default=str(DEFAULT_MNIST), help="MNIST .npz for the bench's own model")
    ap.add_argument("--cache", default="/tmp/lipgraph-bench", help="where the bench's own model is kept")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--steps", type=int, default=None, help="bracketing steps (default: certify's, --radius-steps)")
    ap.add_argument("--out", default="local_bisect.json")
    args = ap.parse_args()
    if args.model is None:
        args.model, args.data = own_model(args.dataset, Path(args.cache))
    elif args.data is None:
        ap.error("--model needs --data (its test split, an .npz with x and y)")
    from threadpoolctl import threadpool_limits

    from lipgraph import local_bisect, pairs
    from lipgraph.certify import certify
    from lipgraph.loader import load_model

    d = np.load(args.data)
    x, y = d["x"][: args.limit], d["y"][: args.limit]
    load_model(args.model)
    rows = {}
    with threadpool_limits(1):
        certify(args.model, x[:8], y[:8], eps=args.eps, providers="cpu")  # warm-up: imports, first session
        steps_default = local_bisect.BISECT_STEPS if args.steps is None else args.steps
        for label, steps in (("grid", 0), ("bisection", steps_default)):
            orig, local_bisect.BISECT_STEPS = local_bisect.BISECT_STEPS, steps
            pairs._CACHE.clear()  # per-pair bounds are memoised per model in-process: time both runs cold
            try:
                t0 = time.perf_counter()
                c = certify(args.model, x, y, eps=args.eps, providers="cpu")
                wall = time.perf_counter() - t0
            finally:
                local_bisect.BISECT_STEPS = orig
            lb = c.meta["local_bounds"]
            evals = sum(lb["samples_checked"].values()) + lb["bisection"]["evaluations"]
            rows[label] = {
                "median_radius": c.median_radius,
                "mean_radius": c.mean_radius,
                "certified_accuracy": c.certified_accuracy,
                "local_time_s": lb["time_s"],
                "certify_time_s": round(wall, 3),
                "bound_evaluations": evals,
                "bisection": lb["bisection"],
                "radii": c.radii,
            }
    grid, bis = rows["grid"], rows["bisection"]
    raised = bis["radii"] > grid["radii"]
    flips = _pgd_flips(args.model, x[raised], y[raised], bis["radii"][raised]) if raised.any() else 0
    # the same attack at 3x the radii: it must find flips there, or "0 flips inside" says nothing
    outside = _pgd_flips(args.model, x[raised], y[raised], 3.0 * bis["radii"][raised]) if raised.any() else 0
    print(f"{'':10} {'median r':>9} {'mean r':>8} {'local s':>8} {'certify s':>9} {'evals':>6}  certified")
    for label, row in rows.items():
        print(
            f"{label:10} {row['median_radius']:9.4f} {row['mean_radius']:8.4f} {row['local_time_s']:8.2f} "
            f"{row['certify_time_s']:9.2f} {row['bound_evaluations']:6d}  {row['certified_accuracy']}"
        )
    ratio_r = bis["median_radius"] / grid["median_radius"]
    ratio_t = bis["local_time_s"] / max(grid["local_time_s"], 1e-9)
    print(
        f"median radius x{ratio_r:.3f}; local-bound time x{ratio_t:.2f}; samples raised {int(raised.sum())}; "
        f"PGD flips inside the raised radii: {flips} (at 3x the radii: {outside})"
    )
    out = {
        "model": args.model,
        "data": args.data,
        "samples": len(x),
        "eps": args.eps,
        "steps": steps_default,
        "rows": {k: {kk: vv for kk, vv in v.items() if kk != "radii"} for k, v in rows.items()},
        "median_radius_ratio": ratio_r,
        "local_time_ratio": ratio_t,
        "samples_raised": int(raised.sum()),
        "pgd_flips_inside_raised_radii": flips,
        "pgd_flips_at_3x_raised_radii": outside,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
