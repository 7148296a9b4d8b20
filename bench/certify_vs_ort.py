"""Benchmark: the whole `lipgraph certify` process vs a bare ONNX Runtime pass in its own process.

Both processes read the same .npz (30,000 MNIST-size images by default) and run the same model with
the same batch size and thread settings; the bare pass does nothing else. Wall-clock times of the
whole processes (imports, loading, inference, and for lipgraph the bound, radii and report) are
measured with subprocess + perf_counter; medians of several runs after one warm-up each.
Target (issue 3): lipgraph / bare <= 1.25.

    python bench/certify_vs_ort.py [--data /work/shared/data/mnist.npz] [--n 30000] [--runs 5]

Prints a table and writes bench/results/certify_vs_ort.json. The model is a 4-conv MNIST CNN with
random weights (the timing does not depend on training), built in torch and exported to ONNX.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path("/work/shared/data/mnist.npz")

BARE_ORT = r'''
import os, sys
import numpy as np
import onnxruntime as ort
model, data, bs, SPIN = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with np.load(data, allow_pickle=False) as f:
    x = f["x"].astype(np.float32)
so = ort.SessionOptions()
so.intra_op_num_threads = os.cpu_count() or 1
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
if SPIN == "0":  # the same session options as lipgraph's (lipgraph/inference.py)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
sess = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
preds = [sess.run(None, {name: x[i:i + bs]})[0].argmax(1) for i in range(0, len(x), bs)]
print(len(np.concatenate(preds)))
'''


def make_cnn(path: Path, arch: str) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    if arch == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
        ).eval()
    else:  # an MLP of similar cost per image, for when no Conv rule is available
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                              nn.Linear(1024, 10)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, dynamo=False)


def make_data(src: Path | None, n: int, dst: Path) -> str:
    if src is not None and src.is_file():
        with np.load(src, allow_pickle=False) as f:
            xs = [f[k] for k in ("x_test", "x_train", "x") if k in f.files]
            ys = [f[k] for k in ("y_test", "y_train", "y") if k in f.files]
        x = np.concatenate(xs)[:n]
        y = np.concatenate(ys)[:n] if ys else None
        origin = f"{src} (first {len(x)} images)"
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        origin = "synthetic uint8 28x28"
    x = (x.astype(np.float32) / 255.0).reshape(len(x), 1, 28, 28)
    if y is None:
        np.savez(dst, x=x)
    else:
        np.savez(dst, x=x, y=y.astype(np.int64))
    return origin


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST-style .npz (else synthetic images)")
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--arch", choices=["cnn", "mlp"], default="cnn")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "certify_vs_ort.json")
    ap.add_argument("--quick", action="store_true", help="3,000 images, 2 runs (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.runs = min(args.n, 3000), min(args.runs, 2)

    work = Path(tempfile.mkdtemp(prefix="lipgraph-bench-"))
    try:
        model, data, script = work / "model.onnx", work / "data.npz", work / "bare_ort.py"
        make_cnn(model, args.arch)
        origin = make_data(args.data, args.n, data)
        script.write_text(BARE_ORT)
        exe = shutil.which("lipgraph") or str(Path(sys.executable).with_name("lipgraph"))
        lip_cmd = [exe, "certify", str(model), "--data", str(data), "--batch-size", str(args.batch_size),
                   "--format", "json", "-o", str(work / "report.json"), "-q", "--exit-zero"]
        # the bare pass gets lipgraph's session options (no spinning); "spin" = ORT's defaults, for reference
        ort_cmd = [sys.executable, str(script), str(model), str(data), str(args.batch_size), "0"]
        spin_cmd = ort_cmd[:-1] + ["1"]
        p = subprocess.run(lip_cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"lipgraph certify failed on the {args.arch}: {p.stderr.strip()}", file=sys.stderr)
            return 2
        timed(ort_cmd)  # warm-up (file cache)
        lip_t, ort_t, spin_t = [], [], []
        for _ in range(args.runs):  # interleaved, so drifting machine load hits all alike
            ort_t.append(timed(ort_cmd))
            lip_t.append(timed(lip_cmd))
            spin_t.append(timed(spin_cmd))
        report = json.loads((work / "report.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.n
    lip_med, ort_med = statistics.median(lip_t), statistics.median(ort_t)
    ratio = lip_med / ort_med
    result = {
        "summary": {
            "ratio": ratio, "target_ratio": 1.25, "target_met": ratio <= 1.25,
            "lipgraph_s": lip_med, "bare_ort_s": ort_med, "images": n,
            "lipgraph_images_per_s": n / lip_med, "bare_ort_images_per_s": n / ort_med,
        },
        "command": " ".join(["python", "bench/certify_vs_ort.py", *sys.argv[1:]]),
        "model": "4-conv MNIST CNN (random init)" if args.arch == "cnn" else "MLP 784-1024-1024-10 (random init)",
        "data": origin,
        "images": n,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "lipgraph_certify_s": {"median": lip_med, "all": lip_t},
        "bare_ort_s": {"median": ort_med, "all": ort_t},
        "bare_ort_default_spinning_s": {"median": statistics.median(spin_t), "all": spin_t},
        "lipgraph_images_per_s": n / lip_med,
        "bare_ort_images_per_s": n / ort_med,
        "ratio": ratio,
        "target_ratio": 1.25,
        "lipgraph_time_split_s": {k: report["meta"].get(k) for k in
                                  ("time_bound_s", "time_inference_s", "time_bound_wait_s", "time_radii_s",
                                   "time_total_s")},
        "provider": report["meta"].get("provider"),
        # the per-sample float allowance (issue 15): its method and size on this model
        "float_error": report["meta"].get("float_error"),
        "float_allowance": report["meta"].get("float_allowance"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    print(f"{'':24}{'median s':>10}{'images/s':>12}")
    print(f"{'lipgraph certify':24}{lip_med:10.3f}{n / lip_med:12,.0f}")
    print(f"{'bare ONNX Runtime':24}{ort_med:10.3f}{n / ort_med:12,.0f}")
    spin_med = statistics.median(spin_t)
    print(f"{'  (ORT default spinning)':24}{spin_med:10.3f}{n / spin_med:12,.0f}")
    print(f"ratio {result['ratio']:.3f} (target <= 1.25); {n} images, batch {args.batch_size}, "
          f"{args.runs} runs, {result['model']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ratio <= 1.25 else 1  # 1: ran, but missed the target (bench/run_all.py convention)


if __name__ == "__main__":
    sys.exit(main())
