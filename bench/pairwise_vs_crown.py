"""Benchmark (issue 16): per-class-pair network bounds against bound propagation and an attack.

For each model and eps: certified accuracy of lipgraph before (``--tight-pairs off --local-bounds off``),
with per-pair bounds (``--tight-pairs auto --local-bounds off``) and after (both ``auto``), of CROWN
and alpha-CROWN (auto_LiRPA, run in a separate interpreter since it pins its
own torch range), and the PGD upper limit (correct and not broken by L2 PGD at eps). Every sample a
method certifies at eps is attacked at eps (the same PGD run); ``flips`` counts certified samples
the attack breaks (must be 0). Times are wall-clock seconds of each method on the same machine.

    python bench/pairwise_vs_crown.py [--extra MODEL.onnx DATA.npz] [--lirpa-python PY] [--lirpa-path DIR]

auto_LiRPA setup used here (its PyPI release needs torch < 1.13; the repository's works with 2.13):
``python -m venv --system-site-packages /tmp/lirpa && /tmp/lirpa/bin/pip install --no-deps tqdm appdirs
graphviz`` and the repository checked out at ``--lirpa-path``. Without it the CROWN columns are "n/a".
Writes bench/results/pairwise_vs_crown.json.
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
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = ROOT / "sample_models"

LIRPA_SCRIPT = r"""
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
for kind in spec["layers"]:
    layers.append({"flatten": torch.nn.Flatten(), "relu": torch.nn.ReLU()}.get(kind) or torch.nn.Linear(1, 1))
model = torch.nn.Sequential(*layers)
for i, kind in enumerate(spec["layers"]):
    if kind == "linear":
        w, b = state[f"{i}.weight"], state[f"{i}.bias"]
        model[i] = torch.nn.Linear(w.shape[1], w.shape[0])
        model[i].weight.data, model[i].bias.data = w, b
model.eval()
k = spec["classes"]
out = {}
chunk = spec["chunk"]
bm = BoundedModule(model, x[:chunk], device="cpu")
bm.set_bound_opts({"optimize_bound_args": {"iteration": spec["alpha_iters"], "lr_alpha": 0.1}})
for method in spec["methods"]:
    res = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for eps in spec["eps"]:
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
            lb, _ = bm.compute_bounds(x=(bt,), C=c, method=method, bound_upper=False)
            cert.append((lb.detach() > 0).all(dim=1))
        res[str(eps)] = torch.cat(cert).numpy().astype(int).tolist()
    out[method] = {"certified": res, "time_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
json.dump(out, open(sys.argv[4], "w"))
"""


def onnx_to_torch(path: Path):  # noqa: ANN201 - torch is imported lazily
    """A torch Sequential equal to a (Reshape/Flatten, Gemm/MatMul+Add, Relu) chain, or None."""
    import torch

    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"}
    init.update(consts)
    layers: list[torch.nn.Module] = []
    kinds: list[str] = []
    pending: np.ndarray | None = None
    for n in m.graph.node:
        if n.op_type in ("Constant",):
            continue
        if n.op_type in ("Reshape", "Flatten") and not layers:
            layers.append(torch.nn.Flatten())
            kinds.append("flatten")
        elif n.op_type == "Gemm":
            attrs = {a.name: a for a in n.attribute}
            w = init[n.input[1]]
            if "transB" not in attrs or attrs["transB"].i != 1:
                w = w.T
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            lin.bias.data = torch.from_numpy(init[n.input[2]].astype(np.float32))
            layers.append(lin)
            kinds.append("linear")
        elif n.op_type == "MatMul" and n.input[1] in init:
            pending = init[n.input[1]].T
        elif n.op_type == "Add" and pending is not None:
            lin = torch.nn.Linear(pending.shape[1], pending.shape[0])
            lin.weight.data = torch.from_numpy(np.ascontiguousarray(pending, dtype=np.float32))
            lin.bias.data = torch.from_numpy(init[n.input[1]].astype(np.float32))
            layers.append(lin)
            kinds.append("linear")
            pending = None
        elif n.op_type == "Relu":
            layers.append(torch.nn.ReLU())
            kinds.append("relu")
        else:
            return None, None
    return torch.nn.Sequential(*layers).eval(), kinds


def pgd_robust(model, x: np.ndarray, y: np.ndarray, eps: float, steps: int = 100, restarts: int = 4):  # noqa: ANN001
    """Correct and not flipped by L2 PGD (margin loss) at radius eps."""
    import torch

    xt, yt = torch.from_numpy(x.reshape(len(x), -1)).float(), torch.from_numpy(y).long()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        flipped = model(xt.view(x.shape)).argmax(1) != yt
    for _ in range(restarts):
        d = torch.randn(xt.shape, generator=gen)
        d = d / d.norm(dim=1, keepdim=True) * eps * torch.rand(len(xt), 1, generator=gen)
        for _ in range(steps):
            d.requires_grad_(True)
            z = model((xt + d).view(x.shape))
            zt = z.gather(1, yt.view(-1, 1)).squeeze(1)
            other = z.clone()
            other[torch.arange(len(xt)), yt] = -torch.inf
            margin = zt - other.max(1).values
            (g,) = torch.autograd.grad(margin.sum(), d)
            with torch.no_grad():
                flipped |= margin < 0
                g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
                d = d - 2.5 * eps / steps * g
                d = d * torch.clamp(eps / d.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0)
        with torch.no_grad():
            flipped |= model((xt + d).view(x.shape)).argmax(1) != yt
    return (~flipped).numpy()


def run_lirpa(model, kinds, x, y, eps, args) -> dict | None:  # noqa: ANN001
    import torch

    if not args.lirpa_python or not Path(args.lirpa_python).exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "layers": kinds,
            "classes": int(model(torch.from_numpy(x[:1])).shape[1]),
            "eps": eps,
            "alpha_iters": args.alpha_iters,
            "methods": ["CROWN"] if args.no_alpha else ["CROWN", "CROWN-Optimized"],
            "chunk": args.chunk,
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        torch.save(model.state_dict(), Path(tmp) / "state.pt")
        np.savez(Path(tmp) / "data.npz", x=x, y=y)
        (Path(tmp) / "run.py").write_text(LIRPA_SCRIPT)
        env = dict(os.environ, PYTHONPATH=args.lirpa_path or "", OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [
                args.lirpa_python,
                str(Path(tmp) / "run.py"),
                str(Path(tmp) / "spec.json"),
                str(Path(tmp) / "state.pt"),
                str(Path(tmp) / "data.npz"),
                str(Path(tmp) / "out.json"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print("auto_LiRPA failed:", proc.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads((Path(tmp) / "out.json").read_text())


def bench_model(name: str, path: Path, data: Path, eps: list[float], args) -> dict:  # noqa: ANN001
    import torch

    from lipgraph import pairs
    from lipgraph.certify import certify

    torch.set_num_threads(1)
    with np.load(data) as d:
        x = d["x" if "x" in d else "x_test"].astype(np.float32)
        y = d["y" if "y" in d else "y_test"].astype(np.int64)
        if x.ndim == 3:
            x = x[:, None]
        if x.max() > 1.5:
            x = x / 255.0
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    row: dict = {"model": name, "samples": len(x), "eps": eps, "certified": {}, "time_s": {}, "cpu_s": {}, "flips": {}}
    # before: the Lipschitz radii only; pairs: + per-pair network bounds; after: + per-sample local bounds
    for key, mode, local in (("lipgraph-before", "off", "off"), ("lipgraph-pairs", "auto", "off"),
                             ("lipgraph-after", "auto", "auto")):
        pairs._CACHE.clear()  # each run pays for its own per-pair refinement (the cache would favour later runs)
        t0, c0 = time.perf_counter(), time.process_time()
        cert = certify(path, x, y, eps=eps, tight_pairs=mode, local_bounds=local)
        row["time_s"][key] = round(time.perf_counter() - t0, 3)
        row["cpu_s"][key] = round(time.process_time() - c0, 3)
        row["certified"][key] = {str(e): (cert.correct & (cert.radii >= e)).astype(int).tolist() for e in eps}
        if key == "lipgraph-after":
            row["local_bounds"] = {k: v for k, v in cert.meta["local_bounds"].items()}
            row["pair_bounds"] = {k: v for k, v in cert.meta["pair_bounds"].items() if k != "pairs"}
    model, kinds = onnx_to_torch(path)
    if model is not None:
        t0 = time.perf_counter()
        row["certified"]["pgd-upper"] = {str(e): pgd_robust(model, x, y, e).astype(int).tolist() for e in eps}
        row["time_s"]["pgd-upper"] = round(time.perf_counter() - t0, 3)
        lirpa = run_lirpa(model, kinds, x, y, eps, args)
        if lirpa is not None:
            for method, label in (("CROWN", "crown"), ("CROWN-Optimized", "alpha-crown")):
                if method not in lirpa:
                    continue
                row["certified"][label] = lirpa[method]["certified"]
                row["time_s"][label] = round(lirpa[method]["time_s"], 3)
                row["cpu_s"][label] = round(lirpa[method]["cpu_s"], 3)
        for meth, per_eps in row["certified"].items():
            if meth == "pgd-upper":
                continue
            row["flips"][meth] = sum(
                int(np.sum(np.array(per_eps[str(e)]) & ~np.array(row["certified"]["pgd-upper"][str(e)]).astype(bool)))
                for e in eps
            )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--extra", nargs=2, action="append", default=[], metavar=("MODEL", "DATA"))
    ap.add_argument("--samples", nargs="*", default=["plain", "lmt", "awp", "groupsort"])
    ap.add_argument("--lirpa-python", default="/tmp/lirpa_pairs/bin/python")
    ap.add_argument("--lirpa-path", default="/tmp/auto_lirpa_src")
    ap.add_argument("--alpha-iters", type=int, default=10)
    ap.add_argument("--no-alpha", action="store_true", help="CROWN only (alpha-CROWN: ~7 min per digits model)")
    ap.add_argument("--quick", action="store_true", help="lmt and plain digits, 100 samples, CROWN only")
    ap.add_argument("--out", default="pairwise_vs_crown.json", help="file name under bench/results/")
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.samples, args.limit, args.no_alpha = ["plain", "lmt"], args.limit or 100, True
    rows = []
    models = [(s, SAMPLES / f"{s}.onnx", SAMPLES / "digits_test.npz") for s in args.samples]
    models += [(Path(m).stem, Path(m), Path(d)) for m, d in args.extra]
    for name, path, data in models:
        rows.append(bench_model(name, path, data, args.eps, args))
        r = rows[-1]
        print(f"\n{name} ({r['samples']} samples); wall (s): " + ", ".join(f"{k} {v}" for k, v in r["time_s"].items()))
        print("cpu (s): " + ", ".join(f"{k} {v}" for k, v in r["cpu_s"].items()))
        meths = list(r["certified"])
        print("| eps | " + " | ".join(meths) + " |")
        print("|---" * (len(meths) + 1) + "|")
        for e in args.eps:
            cells = [f"{100 * np.mean(r['certified'][m][str(e)]):.1f}%" for m in meths]
            print(f"| {e:g} | " + " | ".join(cells) + " |")
        print("flips (certified but broken by PGD, all eps):", r["flips"])
        sys.stdout.flush()
    summary = []
    for r in rows:
        acc = {m: {e: float(np.mean(v)) for e, v in per.items()} for m, per in r["certified"].items()}
        summary.append({k: v for k, v in r.items() if k != "certified"} | {"certified_accuracy": acc})
    out = HERE / "results" / args.out
    out.parent.mkdir(exist_ok=True)
    # targets (issue 16): no certified sample broken by the attack; on LMT models lipgraph (after)
    # certifies at least as much as CROWN at every eps
    flips = sum(sum(r["flips"].values()) for r in rows)
    lmt_ok = all(
        np.mean(r["certified"]["lipgraph-after"][str(e)]) >= np.mean(r["certified"]["crown"][str(e)])
        for r in rows
        if "lmt" in r["model"] and "crown" in r["certified"]
        for e in args.eps
    )
    head = {"flips": flips, "lmt_at_least_crown": lmt_ok}
    for r in summary:
        acc = r["certified_accuracy"]
        e = "0.5" if "0.5" in acc["lipgraph-after"] else next(iter(acc["lipgraph-after"]))
        for meth in ("lipgraph-before", "lipgraph-after", "crown"):
            if meth in acc:
                head[f"{r['model']}@{e} {meth}"] = round(acc[meth][e], 4)
    out.write_text(json.dumps({"summary": head, "rows": summary, "argv": sys.argv[1:]}, indent=1))
    print(f"\nwrote {out}")
    sys.exit(0 if flips == 0 and lmt_ok else 1)


if __name__ == "__main__":
    main()
