"""Local bounds on conv nets: the structured (convolution) form against the dense one and auto_LiRPA CROWN.

For each model (a conv chain, e.g. ``lipgraph train --arch cnn``): lipgraph's certified accuracy with
``--local-bounds off`` and ``all`` (``--mode auto`` for the default, which skips chains over its per-sample work cap,
e.g. the MNIST CNN; one thread), the local bound's ms per sample and eps, which form ``auto``
ran (dense matrices or structured convolutions), the bound time of both forms on the same samples where the
dense one runs, auto_LiRPA's CROWN (L2 ball, backward mode, one thread) on the same model and images, and an
L2 PGD attack (60 steps, 3 restarts) inside every radius the local bound gave (flips must be 0).

    nice -n 10 python bench/conv_local.py --model M.onnx M.test.npz [--model ...] [--n 1000] \
        [--eps 0.1 0.25 0.5] [--skip-crown] [--forms] --out conv_local.json

auto_LiRPA runs in its own interpreter (``--lirpa-python``, ``--lirpa-path``). Writes bench/results/<out>.
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
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from crown_10k import CROWN_SCRIPT  # noqa: E402  (the same auto_LiRPA driver, with conv layers added)

CONV_CROWN_SCRIPT = CROWN_SCRIPT.replace(
    """    if kind == "linear":""",
    """    if isinstance(kind, dict):
        w, b = state[f"{i}.weight"], state[f"{i}.bias"]
        conv = torch.nn.Conv2d(w.shape[1] * kind["group"], w.shape[0], tuple(w.shape[2:]), stride=kind["stride"],
                               padding=kind["pad"], dilation=kind["dilation"], groups=kind["group"])
        conv.weight.data, conv.bias.data = w, b
        layers.append(conv)
    elif kind == "linear":""",
)


def onnx_to_torch(path: Path):  # type: ignore[no-untyped-def]
    """(Conv | Gemm | Relu | Flatten) chains as a torch Sequential, and the layer kinds for the driver."""
    import torch

    proto = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    layers, kinds = [], []
    for node in proto.graph.node:
        a = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
        if node.op_type == "Conv":
            w, b = init[node.input[1]], init[node.input[2]]
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:]:
                raise SystemExit("asymmetric pads")
            kind = {
                "stride": list(a.get("strides", [1, 1])),
                "pad": pads[:2],
                "dilation": list(a.get("dilations", [1, 1])),
                "group": int(a.get("group", 1)),
            }
            conv = torch.nn.Conv2d(
                w.shape[1] * kind["group"],
                w.shape[0],
                tuple(w.shape[2:]),
                stride=kind["stride"],
                padding=kind["pad"],
                dilation=kind["dilation"],
                groups=kind["group"],
            )
            conv.weight.data, conv.bias.data = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
            layers.append(conv)
            kinds.append(kind)
        elif node.op_type == "Gemm":
            w, b = init[node.input[1]], init[node.input[2]]
            w = w if a.get("transB", 0) else w.T
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data, lin.bias.data = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
            layers.append(lin)
            kinds.append("linear")
        elif node.op_type == "Relu":
            layers.append(torch.nn.ReLU())
            kinds.append("relu")
        elif node.op_type in ("Flatten", "Reshape"):
            layers.append(torch.nn.Flatten())
            kinds.append("flatten")
        elif node.op_type not in ("Constant", "Identity"):
            raise SystemExit(f"{path}: {node.op_type} is not handled by this bench's converter")
    return torch.nn.Sequential(*layers).eval(), kinds


def pgd_flips(model, x: np.ndarray, y: np.ndarray, radius: np.ndarray, steps: int = 60, restarts: int = 3) -> int:  # type: ignore[no-untyped-def]
    """L2 PGD on the margin inside each radius; returns how many samples it flips."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    r = torch.from_numpy(radius.astype(np.float32)).view(-1, *[1] * (x.ndim - 1))
    gen = torch.Generator().manual_seed(0)
    flipped = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(restarts):
        delta = torch.randn(xt.shape, generator=gen)
        delta = delta / delta.flatten(1).norm(dim=1).view_as(r) * r * 0.5
        for _ in range(steps):
            delta.requires_grad_(True)
            z = model(xt + delta)
            other = z.clone()
            other[torch.arange(len(z)), yt] = -1e9
            loss = (z[torch.arange(len(z)), yt] - other.max(dim=1).values).sum()
            (g,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                g = g / (g.flatten(1).norm(dim=1).view_as(r) + 1e-12)
                delta = delta - 2.5 * r / steps * g
                n = delta.flatten(1).norm(dim=1).view_as(r)
                delta = delta * torch.clamp(0.999 * r / (n + 1e-12), max=1.0)
                flipped |= model(xt + delta).argmax(dim=1) != yt
    return int(flipped.sum())


def run_crown(model, kinds, x: np.ndarray, y: np.ndarray, eps: list[float], args) -> dict:  # type: ignore[no-untyped-def]
    import torch

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
        (Path(tmp) / "run.py").write_text(CONV_CROWN_SCRIPT)
        env = dict(os.environ, PYTHONPATH=args.lirpa_path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        files = [str(Path(tmp) / f) for f in ("run.py", "spec.json", "state.pt", "data.npz", "out.json")]
        proc = subprocess.run([args.lirpa_python, *files], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": proc.stderr[-1500:]}
        res = json.loads((Path(tmp) / "out.json").read_text())
    for v in res["per_eps"].values():
        v["ms_per_sample"] = round(1000 * v["time_s"] / len(x), 2)
    return res


def run_lipgraph(path: Path, x: np.ndarray, y: np.ndarray, eps: list[float], local: str, cost: float | None) -> dict:
    from lipgraph import local_chain
    from lipgraph.certify import certify

    saved = local_chain.STRUCTURED_COST
    if cost is not None:  # force a form: 0 structured, inf dense
        local_chain.STRUCTURED_COST = cost
    try:
        with threadpool_limits(1):
            t0 = time.perf_counter()
            cert = certify(path, x, y, eps=eps, tight_pairs="off", local_bounds=local)
            wall = time.perf_counter() - t0
    finally:
        local_chain.STRUCTURED_COST = saved
    lb = cert.meta.get("local_bounds", {})
    checked = sum((lb.get("samples_checked") or {}).values())
    refuted = sum((lb.get("samples_refuted_by_attack") or {}).values())
    bounded = checked - refuted
    return {
        "certified": {str(e): float(np.mean(cert.correct & (cert.radii >= e))) for e in eps},
        "clean": float(np.mean(cert.correct)),
        "total_s": round(wall, 2),
        "local": {
            k: lb.get(k)
            for k in (
                "used",
                "form",
                "reason",
                "work_per_sample_and_eps",
                "time_s",
                "samples_checked",
                "samples_refuted_by_attack",
                "samples_from_local",
            )
        },
        "ms_per_bounded_sample_and_eps": round(1000 * lb["time_s"] / bounded, 2)
        if lb.get("used") and bounded
        else None,
        "_radii": cert.radii,
        "_local": np.asarray(cert.sample_methods) == "crown-l2" if cert.sample_methods is not None else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs=2, action="append", metavar=("ONNX", "NPZ"), required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--mode", choices=["auto", "all"], default="all", help="--local-bounds of the local runs")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--skip-crown", action="store_true")
    ap.add_argument("--forms", action="store_true", help="also force each form (dense where it runs)")
    ap.add_argument("--lirpa-python", default="/tmp/lirpa_pairs/bin/python")
    ap.add_argument("--lirpa-path", default="/tmp/auto_lirpa_src")
    ap.add_argument("--out", default="conv_local.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    results = []
    for onnx_path, npz in args.model:
        with np.load(npz) as d:
            x, y = d["x"][: args.n].astype(np.float32), d["y"][: args.n].astype(np.int64)
        row: dict = {"model": onnx_path, "samples": len(x), "eps": args.eps}
        row["off"] = run_lipgraph(Path(onnx_path), x, y, args.eps, "off", None)
        row[args.mode] = run_lipgraph(Path(onnx_path), x, y, args.eps, args.mode, None)
        if args.forms:
            for name, cost in (("structured", 0.0), ("dense", float("inf"))):
                row[name] = run_lipgraph(Path(onnx_path), x, y, args.eps, "all", cost)
        model, kinds = onnx_to_torch(Path(onnx_path))
        local = row[args.mode]["_local"]
        if local is not None and local.any():
            idx = np.flatnonzero(local)
            run = row[args.mode]
            run["pgd_flips_inside_local_radii"] = pgd_flips(model, x[idx], y[idx], run["_radii"][idx])
            run["pgd_attacked"] = len(idx)
        if not args.skip_crown:
            row["crown"] = run_crown(model, kinds, x, y, args.eps, args)
        for k in ("off", args.mode, "structured", "dense"):
            if k in row:
                row[k].pop("_radii")
                row[k].pop("_local")
        results.append(row)
        print(f"\n{onnx_path} ({len(x)} samples, 1 thread)")
        print(f"{'method':<24}" + "".join(f"{'eps ' + str(e):>11}" for e in args.eps) + f"{'ms/sample/eps':>15}")
        for k in ("off", args.mode, "structured", "dense"):
            if k in row:
                cert = row[k]["certified"]
                ms = row[k]["ms_per_bounded_sample_and_eps"]
                form = row[k]["local"].get("form") or "-"
                print(
                    f"{'lipgraph ' + k + ' (' + form + ')':<24}"
                    + "".join(f"{cert[str(e)]:>11.3f}" for e in args.eps)
                    + f"{'' if ms is None else ms:>15}"
                )
        if "crown" in row and "per_eps" in row["crown"]:
            pe = row["crown"]["per_eps"]
            print(
                f"{'auto_LiRPA CROWN':<24}"
                + "".join(f"{pe[str(e)]['certified']:>11.3f}" for e in args.eps)
                + f"{np.mean([v['ms_per_sample'] for v in pe.values()]):>15.1f}"
            )
        if "pgd_attacked" in row[args.mode]:
            auto = row[args.mode]
            print(f"PGD inside the {auto['pgd_attacked']} local radii: {auto['pgd_flips_inside_local_radii']} flips")
    out = HERE / "results" / args.out
    out.write_text(json.dumps({"threads": 1, "results": results}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
