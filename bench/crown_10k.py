"""Measured (not extrapolated) time to certify a whole test set: auto_LiRPA CROWN against lipgraph (issue 16).

CROWN bounds each sample's logit differences for one eps per pass (one ``compute_bounds`` per chunk and
eps); lipgraph computes one radius per sample, which answers every eps at once. Both run on one thread
(``torch.set_num_threads(1)``, one BLAS thread). For each model: wall seconds per eps and in total for
CROWN, lipgraph's total certify time (``--tight-pairs auto`` and ``off``; ``auto`` with and without
``--local-bounds``), and the certified accuracy of each at each eps.

    nice -n 10 python bench/crown_10k.py --model /tmp/pairs_mnist/plain.onnx /tmp/pairs_mnist/plain.test.npz \
        [--model M D ...] [--eps 0.25 0.5 1.0 1.58] [--limit N] [--skip crown|lipgraph] --out crown_10k.json

auto_LiRPA runs in its own interpreter (``--lirpa-python``, ``--lirpa-path``; see bench/pairwise_vs_crown.py).
Writes bench/results/<out>.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pairwise_vs_crown import onnx_to_torch  # noqa: E402

CROWN_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
spec = json.load(open(sys.argv[1]))
state = torch.load(sys.argv[2])
data = np.load(sys.argv[3])
x, y = torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()
layers = []
for i, kind in enumerate(spec["layers"]):
    if kind == "linear":
        w, b = state[f"{i}.weight"], state[f"{i}.bias"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0]); lin.weight.data, lin.bias.data = w, b
        layers.append(lin)
    else:
        layers.append(torch.nn.Flatten() if kind == "flatten" else torch.nn.ReLU())
model = torch.nn.Sequential(*layers).eval()
k, chunk = spec["classes"], spec["chunk"]
t_setup = time.perf_counter()
bm = BoundedModule(model, x[:chunk], device="cpu")
setup_s = time.perf_counter() - t_setup
out = {"setup_s": setup_s, "per_eps": {}}
for eps in spec["eps"]:
    t0 = time.perf_counter()
    cert = []
    for s in range(0, len(x), chunk):
        xb, yb = x[s:s + chunk], y[s:s + chunk]
        n = len(xb)
        c = torch.zeros(n, k - 1, k)
        for r in range(n):
            others = [j for j in range(k) if j != int(yb[r])]
            c[r, torch.arange(k - 1), int(yb[r])] = 1.0
            c[r, torch.arange(k - 1), others] = -1.0
        bt = BoundedTensor(xb, PerturbationLpNorm(norm=2, eps=eps))
        lb, _ = bm.compute_bounds(x=(bt,), C=c, method="CROWN", bound_upper=False)
        cert.append((lb.detach() > 0).all(dim=1))
    cert = torch.cat(cert).numpy()
    out["per_eps"][str(eps)] = {"time_s": time.perf_counter() - t0, "certified": float(cert.mean())}
json.dump(out, open(sys.argv[4], "w"))
"""


def load(data: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data) as d:
        x = d["x"].astype(np.float32)
        y = d["y"].astype(np.int64)
    if x.ndim == 3:
        x = x[:, None]
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y


def run_crown(path: Path, x: np.ndarray, y: np.ndarray, eps: list[float], args: argparse.Namespace) -> dict:
    import torch

    model, kinds = onnx_to_torch(path)
    if model is None:
        raise SystemExit(f"{path}: not a (Flatten, Linear, ReLU) chain auto_LiRPA can be given here")
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "layers": kinds,
            "classes": int(model(torch.from_numpy(x[:1])).shape[1]),
            "eps": eps,
            "chunk": args.chunk,
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        torch.save(model.state_dict(), Path(tmp) / "state.pt")
        np.savez(Path(tmp) / "data.npz", x=x, y=y)
        (Path(tmp) / "run.py").write_text(CROWN_SCRIPT)
        env = dict(os.environ, PYTHONPATH=args.lirpa_path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        t0 = time.perf_counter()
        files = [str(Path(tmp) / f) for f in ("run.py", "spec.json", "state.pt", "data.npz", "out.json")]
        proc = subprocess.run([args.lirpa_python, *files], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit("auto_LiRPA failed: " + proc.stderr[-2000:])
        res = json.loads((Path(tmp) / "out.json").read_text())
    res["process_wall_s"] = round(wall, 2)
    res["total_s"] = round(res["setup_s"] + sum(v["time_s"] for v in res["per_eps"].values()), 2)
    return res


def run_lipgraph(path: Path, x: np.ndarray, y: np.ndarray, eps: list[float], mode: str, local: str = "auto") -> dict:
    from lipgraph import pairs
    from lipgraph.certify import certify

    pairs._CACHE.clear()  # each run pays for its own per-pair refinement (the cache would favour later runs)
    with threadpool_limits(1):
        t0 = time.perf_counter()
        cert = certify(path, x, y, eps=eps, tight_pairs=mode, local_bounds=local)
        wall = time.perf_counter() - t0
    acc = {str(e): float(np.mean(cert.correct & (cert.radii >= e))) for e in eps}
    pb = cert.meta.get("pair_bounds", {})
    lb = cert.meta.get("local_bounds", {})
    return {
        "local_bounds_time_s": lb.get("time_s"),
        "local_samples_checked": lb.get("samples_checked"),
        "local_samples_from_local": lb.get("samples_from_local"),
        "local_samples_refuted_by_attack": lb.get("samples_refuted_by_attack"),
        "total_s": round(wall, 2),
        "certified": acc,
        "pair_bounds_time_s": pb.get("time_s"),
        "pairs_by_method": pb.get("pairs_by_method"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs=2, action="append", required=True, metavar=("MODEL", "DATA"))
    ap.add_argument("--eps", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.58])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--skip", choices=["crown", "lipgraph"], default=None)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--lirpa-python", default="/tmp/lirpa_pairs/bin/python")
    ap.add_argument("--lirpa-path", default="/tmp/auto_lirpa_src")
    ap.add_argument("--out", default="crown_10k.json")
    args = ap.parse_args()
    rows = []
    for m, d in args.model:
        x, y = load(Path(d), args.limit)
        row: dict = {"model": m, "samples": len(x), "eps": args.eps}
        if args.skip != "lipgraph":
            row["lipgraph-off"] = run_lipgraph(Path(m), x, y, args.eps, "off")
            row["lipgraph-auto-nolocal"] = run_lipgraph(Path(m), x, y, args.eps, "auto", "off")
            row["lipgraph-auto"] = run_lipgraph(Path(m), x, y, args.eps, "auto")
        if args.skip != "crown":
            row["crown"] = run_crown(Path(m), x, y, args.eps, args)
        rows.append(row)
        print(f"\n{Path(m).name}, {len(x)} samples, 1 thread")
        print("| method | total s | " + " | ".join(f"cert@{e:g}" for e in args.eps) + " |")
        print("|---" * (len(args.eps) + 2) + "|")
        for key in ("lipgraph-off", "lipgraph-auto-nolocal", "lipgraph-auto", "crown"):
            if key not in row:
                continue
            r = row[key]
            cells = [
                r["certified"][str(e)] if "certified" in r else r["per_eps"][str(e)]["certified"] for e in args.eps
            ]
            print(f"| {key} | {r['total_s']} | " + " | ".join(f"{100 * c:.2f}%" for c in cells) + " |")
        if "lipgraph-auto" in row:
            la, before = row["lipgraph-auto"], row["lipgraph-auto-nolocal"]
            checks = sum((la["local_samples_checked"] or {}).values())
            if checks:
                print(f"local bounds: {la['local_bounds_time_s']} s for {checks} sample-eps checks "
                      f"({1e3 * la['local_bounds_time_s'] / checks:.2f} ms each); certify time with / without local "
                      f"bounds: {la['total_s'] / before['total_s']:.2f}")
        if "crown" in row and "lipgraph-auto" in row:
            print(f"time ratio crown / lipgraph-auto: {row['crown']['total_s'] / row['lipgraph-auto']['total_s']:.2f}")
        sys.stdout.flush()
    out = HERE / "results" / args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "argv": sys.argv[1:]}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
