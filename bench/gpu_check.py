"""The GPU check of issue 12: certificates on CUDA against the CPU, PGD inside the CUDA radii, a short
training run with --device cuda, and certify throughput CUDA vs CPU. One table, one JSON.

    python bench/gpu_check.py                 # on a machine with onnxruntime-gpu and a GPU (bench/gpu_check.sh)
    python bench/gpu_check.py --dry-run       # rehearsal on the CPU: "CUDA" is the CPU provider, sizes tiny

Every step prints what it does and runs even when an earlier one failed; a failed step is a row of the
table, not a crash. Without a CUDA provider (and without --dry-run) nothing is measured and no JSON is
written: a CPU figure must never pass for a GPU one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = ("plain", "lmt", "groupsort", "awp")
EPS = (0.1, 0.25, 0.5, 1.0)


def say(msg: str) -> None:
    print(msg, flush=True)


class Steps:
    """Runs named steps, each isolated: an exception becomes a failed row, and the next step runs."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        say(f"== {name}: {what}")
        t0 = time.perf_counter()
        try:
            res = fn()
            status = "ok" if res.get("passed", True) else "FAILED CHECK"
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the script goes on
            traceback.print_exc(file=sys.stderr)
            res, status = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}, "ERROR"
        res["seconds"] = round(time.perf_counter() - t0, 2)
        self.rows.append({"step": name, "status": status, **res})
        say(f"   -> {status}: {summary(res)}")
        return res if status != "ERROR" else None


def summary(res: dict[str, Any]) -> str:
    keys = [k for k in res if k not in ("details", "per_model")]
    return ", ".join(f"{k}={_fmt(res[k])}" for k in keys)[:300]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------------ steps
def environment(gpu: str) -> dict[str, Any]:
    import onnxruntime as ort

    from lipgraph.providers import device_name

    info: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, torch_sees_gpu=torch.cuda.is_available())
    except ImportError:
        info["torch"] = None
    info["gpu"] = device_name(gpu, {gpu: {"device_id": "0"}}) if gpu == "CUDAExecutionProvider" else "dry run (CPU)"
    return info


def logits_and_cert(model: str, x: np.ndarray, y: np.ndarray, providers: str) -> tuple[np.ndarray, Any]:
    """The certificate and the raw logits ONNX Runtime gave for it (same provider, same options)."""
    from lipgraph.analyze import analyze
    from lipgraph.certify import certify
    from lipgraph.inference import Runner, logits_model, model_input

    cert = certify(model, x, y, eps=list(EPS), providers=providers)
    a = analyze(model)
    inp = model_input(a.graph.model, a.graph.input_name)
    runner = Runner(logits_model(a.graph.model, inp.name, a.logits_name, None), inp, a.logits_name, providers)
    if runner.provider != cert.meta["provider"]:
        raise RuntimeError(f"providers differ between runs: {runner.provider} vs {cert.meta['provider']}")
    return runner.run(x.astype(np.float32)), cert


def compare_certificates(models: list[Path], x: np.ndarray, y: np.ndarray, gpu: str) -> dict[str, Any]:
    """CUDA vs CPU per sample model: logit deviation against the allowance, certified sets at each eps."""
    from lipgraph.certify import MARGIN_REL

    per_model: dict[str, Any] = {}
    passed = True
    for path in models:
        f_gpu, c_gpu = logits_and_cert(str(path), x, y, gpu)
        f_cpu, c_cpu = logits_and_cert(str(path), x, y, "cpu")
        scale = np.max(np.abs(f_cpu), axis=1)
        dev = np.max(np.abs(f_gpu - f_cpu), axis=1)  # per sample, max over logits
        # a margin moves by at most 2 * dev; both certificates take at least MARGIN_REL * max|logit| off it
        allowance = MARGIN_REL * (scale + np.max(np.abs(f_gpu), axis=1))
        margins_ok = bool(np.all(2 * dev <= allowance))
        r_gpu, r_cpu = c_gpu.radii, c_cpu.radii
        # how far a radius may move: the usable margin's change over the denominator that sample used
        usable = np.maximum(_margin(f_cpu, c_cpu.labels) - MARGIN_REL * scale, 0.0)
        den = np.where(r_cpu > 0, usable / np.where(r_cpu > 0, r_cpu, 1.0), np.inf)
        tol = (2 * dev + allowance) / den * (1 + 1e-6)
        lost, gained, beyond = {}, {}, 0
        for e in EPS:
            was, now = (r_cpu >= e) & c_cpu.correct, (r_gpu >= e) & c_gpu.correct
            lost[str(e)], gained[str(e)] = int(np.sum(was & ~now)), int(np.sum(now & ~was))
            beyond += int(np.sum((was ^ now) & (np.abs(r_gpu - r_cpu) > tol)))
        # a CUDA session may flush subnormals (FTZ + DAZ): its float allowance must be the flush model's
        subnormals = c_gpu.meta.get("float_error", {}).get("subnormals")
        flush_ok = c_gpu.meta["provider"] != "CUDAExecutionProvider" or subnormals == "flush"
        ok = margins_ok and beyond == 0 and c_gpu.meta["precision"] == "fp32" and flush_ok
        passed &= ok
        per_model[path.stem] = {
            "provider": c_gpu.meta["provider"],
            "device": c_gpu.meta.get("device"),
            "precision": c_gpu.meta["precision"],
            "subnormals": subnormals,
            "max_rel_logit_dev": float(np.max(dev / scale)),
            "allowance_rel": MARGIN_REL,
            "margins_within_allowance": margins_ok,
            "certified_cpu": c_cpu.certified_accuracy,
            "certified_gpu": c_gpu.certified_accuracy,
            "lost": lost,
            "gained": gained,
            "changes_beyond_allowance": beyond,
            "max_abs_radius_diff": float(np.max(np.abs(r_gpu - r_cpu))),
            "passed": ok,
        }
    worst = max(v["max_rel_logit_dev"] for v in per_model.values())
    return {
        "models": len(per_model),
        "worst_rel_logit_dev": worst,
        "lost_total": sum(sum(v["lost"].values()) for v in per_model.values()),
        "gained_total": sum(sum(v["gained"].values()) for v in per_model.values()),
        "passed": passed,
        "per_model": per_model,
    }


def _margin(f: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    t = np.argmax(f, axis=1) if labels is None else labels
    rows = np.arange(len(f))
    other = f.copy()
    other[rows, t] = -np.inf
    return f[rows, t] - np.max(other, axis=1)


def train_on_device(device: str, epochs: int, limit: int | None, work: Path, legacy: bool = False) -> dict[str, Any]:
    """A short `lipgraph train --device ...` run through the Python API (the model is kept for the attack)."""
    import torch

    from lipgraph.train.data import load
    from lipgraph.train.export import export_onnx, plain_model
    from lipgraph.train.loop import TrainConfig, train

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no GPU (a CPU build of torch, or no driver)")
    data = load("digits", seed=0, limit_train=limit)
    cfg = TrainConfig(arch="mlp", method="lmt", epochs=epochs, c=0.5, seed=0, device=device, log=say)
    t0 = time.perf_counter()
    model, hist = train(cfg, data)
    seconds = time.perf_counter() - t0
    net = plain_model(model.to("cpu"))
    path = work / f"trained_{device}.onnx"
    # the legacy exporter in a CPU rehearsal only because it is faster; the GPU run uses the default one
    export_onnx(net, data.in_shape, str(path), {"method": "lmt", "device_check": device}, legacy=legacy)
    TRAINED.update(net=net, path=path, x=data.x_test, y=data.y_test)
    return {
        "device": device,
        "epochs": epochs,
        "train_seconds": round(seconds, 2),
        "val_acc": hist[-1].val_acc,
        "steps_per_s": round(epochs * math.ceil(len(data.x_train) / 64) / seconds, 1),
    }


TRAINED: dict[str, Any] = {}


def attack_inside_radii(gpu: str, steps: int, restarts: int) -> dict[str, Any]:
    """L2 PGD (margin loss) inside 0.999x each CUDA-certified radius: no prediction may flip, in torch or
    in ONNX Runtime on the same provider; at 3x the radius some should flip (the attack is not toothless)."""
    import onnxruntime as ort
    import torch

    from lipgraph.certify import certify

    if not TRAINED:
        raise RuntimeError("no trained model (the training step failed)")
    net, x, y = TRAINED["net"], TRAINED["x"], TRAINED["y"]
    cert = certify(str(TRAINED["path"]), x, y, eps=[0.1], providers=gpu)
    ok = np.flatnonzero(cert.radii > 0)
    if len(ok) == 0:
        raise RuntimeError("no sample certified: nothing to attack")
    xs = torch.from_numpy(x[ok].reshape(len(ok), -1))
    t = torch.from_numpy(y[ok])
    r = torch.from_numpy(cert.radii[ok].astype(np.float32))
    shape = x.shape[1:]

    def f(v: torch.Tensor) -> torch.Tensor:
        return net(v.view(-1, *shape))

    adv_in, flips_in = _pgd(f, xs, t, 0.999 * r, steps, restarts)
    _, flips_out = _pgd(f, xs, t, 3.0 * r, steps, restarts)
    from lipgraph.providers import parse_providers

    sess = ort.InferenceSession(str(TRAINED["path"]), providers=list(parse_providers(gpu).names))
    pred = sess.run(None, {sess.get_inputs()[0].name: adv_in.view(-1, *shape).numpy()})[0].argmax(1)
    flips_ort = int(np.sum(pred != y[ok]))
    return {
        "provider": cert.meta["provider"],
        "attacked": int(len(ok)),
        "flips_inside": int(flips_in),
        "flips_inside_ort": flips_ort,
        "flips_at_3x": int(flips_out),
        "passed": flips_in == 0 and flips_ort == 0 and flips_out > 0,
    }


def _pgd(f: Callable[[Any], Any], x: Any, t: Any, r: Any, steps: int, restarts: int) -> tuple[Any, int]:
    import torch

    gen = torch.Generator().manual_seed(0)
    rr = r.view(-1, 1)
    flipped = torch.zeros(len(x), dtype=torch.bool)
    best = x.clone()
    for _ in range(restarts):
        d = torch.randn(x.shape, generator=gen)
        d = d / d.norm(dim=1, keepdim=True) * rr * torch.rand(len(x), 1, generator=gen)
        for _ in range(steps):
            d.requires_grad_(True)
            z = f(x + d)
            other = z.detach().clone()
            other[torch.arange(len(x)), t] = -torch.inf
            margin = z.gather(1, t.view(-1, 1)).squeeze(1) - z.gather(1, other.argmax(1).view(-1, 1)).squeeze(1)
            (g,) = torch.autograd.grad(margin.sum(), d)
            with torch.no_grad():
                d = d - 2.5 * rr / steps * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
                d = d * torch.clamp(rr / d.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0)
        with torch.no_grad():
            hit = f(x + d).argmax(1) != t
            best[hit & ~flipped] = (x + d)[hit & ~flipped]
            keep = ~flipped & ~hit
            best[keep] = (x + d)[keep]
            flipped |= hit
    return best, int(flipped.sum())


def throughput(model: Path, x: np.ndarray, y: np.ndarray, gpu: str, n: int, repeats: int) -> dict[str, Any]:
    """Samples per second of `certify` (inference + radii; the bound once per run) on CUDA and on the CPU."""
    from lipgraph.certify import certify

    xb = np.concatenate([x] * math.ceil(n / len(x)))[:n]
    yb = np.concatenate([y] * math.ceil(n / len(y)))[:n]
    out: dict[str, Any] = {"samples": n}
    for label, prov in (("gpu", gpu), ("cpu", "cpu")):
        best_total, best_inf = math.inf, math.inf
        for _ in range(repeats):
            c = certify(str(model), xb, yb, eps=[0.5], providers=prov, batch_size=1024)
            best_total = min(best_total, c.meta["time_total_s"])
            best_inf = min(best_inf, c.meta["time_inference_s"])
        out[f"{label}_provider"] = c.meta["provider"]
        out[f"{label}_certify_samples_per_s"] = round(n / best_total, 1)
        out[f"{label}_inference_samples_per_s"] = round(n / best_inf, 1)
    out["speedup_certify"] = round(out["gpu_certify_samples_per_s"] / out["cpu_certify_samples_per_s"], 3)
    out["speedup_inference"] = round(out["gpu_inference_samples_per_s"] / out["cpu_inference_samples_per_s"], 3)
    return out


# ------------------------------------------------------------------------------------------------ main
def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'step':<14} {'status':<13} {'s':>7}  result", "-" * 100]
    for r in rows:
        rest = {k: v for k, v in r.items() if k not in ("step", "status", "seconds")}
        lines.append(f"{r['step']:<14} {r['status']:<13} {r.get('seconds', 0):>7.1f}  {summary(rest)}")
        for name, pm in (r.get("per_model") or {}).items():
            lines.append(
                f"{'':<14} {name:<13} {'':>7}  dev {pm['max_rel_logit_dev']:.2e} (allow "
                f"{pm['allowance_rel']:.0e}), lost {sum(pm['lost'].values())}, gained "
                f"{sum(pm['gained'].values())}, beyond {pm['changes_beyond_allowance']}, "
                f"{pm['precision']} on {pm['provider']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="rehearse on the CPU (the CPU provider stands in for CUDA)")
    ap.add_argument(
        "--out",
        default=os.environ.get("OUT") and str(Path(os.environ["OUT"]) / "bench" / "results"),
        help="folder for gpu_check.json (default: $OUT/bench/results, else bench/results)",
    )
    ap.add_argument(
        "--require-cuda", action="store_true", help="exit 1 when there is no CUDA provider (the shell script)"
    )
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from lipgraph.providers import CUDA

    has_cuda = CUDA in ort.get_available_providers()
    if not has_cuda and not args.dry_run:
        say(
            "gpu_check: this onnxruntime has no CUDA provider: nothing measured, no JSON written "
            "(run bench/gpu_check.sh on a GPU machine, or --dry-run for a CPU rehearsal)"
        )
        return 1 if args.require_cuda else 0
    gpu = "cpu" if args.dry_run else "cuda"
    small = args.dry_run
    out_dir = Path(args.out) if args.out else ROOT / "bench" / "results"
    work = Path(tempfile.mkdtemp(prefix="gpu_check."))
    with np.load(ROOT / "sample_models" / "digits_test.npz") as d:
        x, y = d["x"], d["y"]
    models = [ROOT / "sample_models" / f"{m}.onnx" for m in SAMPLES]
    if small:
        x, y, models = x[:60], y[:60], models[:2]
    steps = Steps()
    env = steps.run("environment", "versions, providers, GPU name", lambda: environment(CUDA if not small else "cpu"))
    steps.run(
        "certify",
        f"sample models on {gpu} vs cpu ({len(x)} samples each)",
        lambda: compare_certificates(models, x, y, gpu),
    )
    steps.run(
        "train",
        f"lipgraph train --device {'cpu' if small else 'cuda'} (LMT, digits)",
        lambda: train_on_device(
            "cpu" if small else "cuda", 3 if small else 10, 600 if small else None, work, legacy=small
        ),
    )
    steps.run(
        "attack",
        f"PGD inside the {gpu} radii of the trained model",
        lambda: attack_inside_radii(gpu, 10 if small else 100, 1 if small else 4),
    )
    steps.run(
        "throughput",
        f"certify samples/s, {gpu} vs cpu",
        lambda: throughput(models[1], x, y, gpu, 500 if small else 50_000, 1 if small else 3),
    )
    say("\n" + table(steps.rows))
    result = {
        "benchmark": "gpu_check",
        "dry_run": bool(small),
        "command": "bash bench/gpu_check.sh" if not small else "python bench/gpu_check.py --dry-run",
        "environment": env,
        "summary": {r["step"]: r["status"] for r in steps.rows},
        "steps": steps.rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    say(f"wrote {out_dir / 'gpu_check.json'}")
    return 0 if all(r["status"] == "ok" for r in steps.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
