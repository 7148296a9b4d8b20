"""Scale curve of `lipgraph bound`: time and peak memory against parameters and input size (issue 13).

Models (plain torch, random init, BN in eval mode with randomized statistics; bench/_models.py): MLPs of
growing width, ResNet-18/34/50 at 32 x 32 (CIFAR stem) and 224 x 224 (ImageNet stem, 1000 classes), and
a ViT-style transformer that must be refused with every attention product named. Each model is exported
with torch's legacy exporter and bounded in a fresh process with one BLAS thread; the parent records
wall time, CPU time and peak resident memory (``ru_maxrss`` of that child). The child also counts the
floating-point work of the Gram products (``8 F m^2 n`` for F complex m x n symbols, ``2 m^2 n`` real), the
dominant cost, so the growth can be stated as time ~ c x Gram-FLOPs.

Old path vs new, in the same run: for the models in ``--old-for`` the child is run again on the code of
``--old-ref`` (default: the commit before the Gram-kernel conv path; extracted with ``git archive`` into a
temporary folder and put first on the child's path), alternating with the new code ``--repeat`` times;
the fastest CPU time of each is kept and their ratio reported. Without git or that commit the old runs
are skipped (said in the output).

The child counts the certificate's work (GFLOP): the Gram products (direct symbols: ``4 F m^2 n`` with the
real-split product; from the kernel's autocorrelation: ``(T m)^2 n`` once plus ``4 D F m^2`` for the
per-frequency DFT) and the Cholesky factorisations (``4/3 m^3`` complex, ``1/3 m^3`` real), so the growth
can be stated as CPU time ~ c x GFLOP.

The targets are checked on the analysis's CPU time in the child (one BLAS thread, after imports): on this
shared machine wall time is mostly waiting for the other jobs.

    nice -n 10 python bench/scale_curve.py            # everything (several minutes on 2 cores)
    python bench/scale_curve.py --quick               # MLPs, ResNet-18 at 32 and the ViT only

Writes bench/results/scale_curve.json. Exit 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
TARGETS = {
    "resnet18-32": {"analyze_cpu_s": 2.0},
    "resnet50-224": {"analyze_cpu_s": 20.0, "peak_gib": 4.0},
    "vit-224": {"analyze_cpu_s": 1.0},
}
# The code before the Gram-kernel conv path (issue 13, second round): the "old" column.
OLD_REF = "c8b843b"


def _count_work(flops: list[float]) -> None:
    """Wrap the certificate's products so the child can report the GFLOP it did (whatever code it runs)."""
    import numpy as np

    from lipgraph.norms import stack_sv

    orig_gram = stack_sv.gram_stack
    new_code = hasattr(stack_sv, "certify_gram_stack")

    def gram(mats: Any) -> Any:
        f, m, n = mats.shape
        m, n = min(m, n), max(m, n)
        # new: real-split complex product (syrk 2n + one product); old: a complex batched product
        flops[0] += (4.0 if new_code else 8.0) * f * m * m * n if np.iscomplexobj(mats) else 2.0 * f * m * m * n
        return orig_gram(mats)

    stack_sv.gram_stack = gram
    if hasattr(stack_sv, "_cholesky_stack"):
        orig_chol = stack_sv._cholesky_stack

        def chol(g: Any, idx: Any, mu: float) -> Any:
            k = g.shape[1]
            flops[0] += (4.0 / 3.0 if np.iscomplexobj(g) else 1.0 / 3.0) * k**3 * len(idx)
            return orig_chol(g, idx, mu)

        stack_sv._cholesky_stack = chol
    try:
        from lipgraph.norms import conv_gram
    except ImportError:
        return
    orig_kernel, orig_symbols = conv_gram.gram_kernel, conv_gram.gram_symbols

    def kernel(pk: Any) -> Any:
        g, mg, cp = pk.shape[:3]
        t = int(np.prod(pk.shape[3:]))
        flops[0] += g * (t * min(mg, cp)) ** 2 * max(mg, cp)
        return orig_kernel(pk)

    def symbols(gk: Any, freqs: Any, grid: Any) -> Any:
        g, d_off, m = gk.r.shape[:3]
        flops[0] += 4.0 * d_off * freqs.shape[0] * g * m * m
        return orig_symbols(gk, freqs, grid)

    conv_gram.gram_kernel, conv_gram.gram_symbols = kernel, symbols
    from lipgraph.norms import conv_fft

    conv_fft.gram_kernel, conv_fft.gram_symbols = kernel, symbols
    try:  # the float32 tier (this round): its products and factorisations count too, float32 or not
        from lipgraph.norms import conv_tiers, stack_sv32
    except ImportError:
        return
    orig_g32, orig_f32 = conv_tiers.gram32, stack_sv32._factor32

    def g32(re: Any, im: Any) -> Any:
        f, m, n = re.shape
        flops[0] += 4.0 * f * min(m, n) ** 2 * max(m, n)
        return orig_g32(re, im)

    def f32(g: Any, err: Any, mu: Any, scale: float, *rows: Any) -> Any:
        flops[0] += 4.0 / 3.0 * g.shape[1] ** 3 * int((mu > 0).sum())
        return orig_f32(g, err, mu, scale, *rows)

    conv_tiers.gram32, stack_sv32._factor32, conv_tiers.gram_stack = g32, f32, gram


def _child(model: str, old_root: str | None, out: str) -> None:
    """In a fresh process: analyze(model), timed, with the certificate's work counted."""
    if old_root:  # the old code first on the path (this file's folder holds no lipgraph)
        sys.path.insert(0, old_root)
        for name in [m for m in sys.modules if m == "lipgraph" or m.startswith("lipgraph.")]:
            del sys.modules[name]
    flops = [0.0]
    _count_work(flops)
    from lipgraph.analyze import analyze
    from lipgraph.errors import UnsupportedModelError
    from lipgraph.rules import load_rules

    load_rules()  # imports are process start-up, not analysis: outside the timed region (the CLI pays them once)
    try:  # the process setting the `lipgraph` command makes before it runs (trees from before it have none)
        from lipgraph.allocator import keep_freed_memory

        allocator = keep_freed_memory()
    except ImportError:
        allocator = False
    t0, c0 = time.perf_counter(), time.process_time()
    res: dict[str, Any] = {}
    try:
        res["bound"] = analyze(model).bound
    except UnsupportedModelError as exc:
        res["refused"] = [[r.op_type, r.node_name] for r in exc.refusals]
    res["analyze_s"] = round(time.perf_counter() - t0, 3)
    res["analyze_cpu_s"] = round(time.process_time() - c0, 3)
    res["gflop"] = round(flops[0] / 1e9, 2)
    res["keeps_freed_memory"] = allocator
    import lipgraph

    res["lipgraph"] = str(Path(lipgraph.__file__).parent)  # which tree ran (the old one for the old column)
    # This process's own peak (VmHWM): ru_maxrss of a child also counts the parent's size at fork (Linux
    # keeps the larger of the old and new images across exec), and the parent here holds torch.
    status = Path("/proc/self/status")
    if status.exists():
        hwm = [ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")]
        if hwm:
            res["own_peak_mib"] = round(int(hwm[0].split()[1]) / 1024, 1)
    Path(out).write_text(json.dumps(res))


def run_child(model: Path, old_root: str | None, timeout: float) -> dict[str, Any]:
    env = dict(os.environ, **{k: "1" for k in BLAS_ENV})
    import threading

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(model), "--out", str(out)]
        with open(Path(tmp) / "err.txt", "w+b") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd + (["--old-root", old_root] if old_root else []), env=env, stderr=err)
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            _, status, usage = os.wait4(proc.pid, 0)
            timer.cancel()
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            stderr = err.read().decode(errors="replace")
        res: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"error": "no result (timeout?)"}
        if proc.returncode != 0:
            res["error"] = stderr[-800:]
    res["wall_s"] = round(wall, 2)
    res["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    res["peak_mib"] = round(usage.ru_maxrss / 1024, 1)
    return res


def export(model: Any, size: int, path: Path) -> dict[str, Any]:
    import onnx
    import torch

    x = torch.randn(1, 3, size, size) if size else torch.randn(1, 784)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"]
        )
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    attention = [n.name for n in m.graph.node if n.op_type == "MatMul" and not set(n.input) & inits]
    return {
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "nodes": len(m.graph.node),
        "attention_matmuls": attention,
    }


def configs(quick: bool) -> list[tuple[str, Any, int]]:
    from bench import _models as M

    out: list[tuple[str, Any, int]] = [(f"mlp-{w}x3", (lambda w=w: M.mlp(w, 3)), 0) for w in (256, 1024, 4096)]
    nets = ["resnet18"] if quick else ["resnet18", "resnet34", "resnet50"]
    sizes = [32] if quick else [32, 224]
    out += [(f"{n}-{s}", (lambda n=n, s=s: M.resnet(n, s)), s) for s in sizes for n in nets]
    out.append(("vit-224", M.vit, 224))
    return out


def _old_tree(ref: str, dest: Path) -> str | None:
    """The lipgraph package of commit ``ref`` extracted into ``dest`` (None when git or the ref is missing)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "lipgraph"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  old path skipped: cannot extract {ref} ({exc})", flush=True)
        return None
    return str(dest)


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the least analysis CPU time (the others' times kept for the record)."""
    ok = [r for r in runs if "analyze_cpu_s" in r]
    best = dict(min(ok, key=lambda r: r["analyze_cpu_s"])) if ok else dict(runs[-1])
    best["all_analyze_cpu_s"] = [r.get("analyze_cpu_s") for r in runs]
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--old-for", default="resnet18-32,resnet50-224", help="models to also run on the old path")
    ap.add_argument("--old-ref", default=OLD_REF, help="git commit of the old path (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of new and old (alternating) for --old-for models")
    ap.add_argument(
        "--only", help="comma-separated model names (default: all of the chosen set); the other rows of --out are kept"
    )
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale_curve.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--old-root", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.old_root, str(args.out))
        return 0
    import torch

    torch.set_num_threads(1)
    old_for = {s.strip() for s in args.old_for.split(",") if s.strip()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lipgraph-scale-") as tmp:
        old_root = _old_tree(args.old_ref, Path(tmp)) if old_for else None
        only = {s.strip() for s in args.only.split(",")} if args.only else None
        for name, build, size in configs(args.quick):
            if only is not None and name not in only:
                continue
            path = Path(tmp) / f"{name}.onnx"
            info = export(build(), size, path)
            row: dict[str, Any] = {"model": name, "input": f"3x{size}x{size}" if size else "784", **info}
            if name in old_for and old_root:
                news, olds = [], []
                for _ in range(max(1, args.repeat)):  # alternating, so both see the same load on average
                    news.append(run_child(path, None, args.timeout))
                    olds.append(run_child(path, old_root, args.timeout))
                row["new"], row["old"] = _best(news), _best(olds)
                row["old_ref"] = args.old_ref
                if row["old"].get("analyze_cpu_s") and row["new"].get("analyze_cpu_s"):
                    # CPU time is the fair ratio on a shared machine (wall time there is mostly waiting).
                    row["speedup_analyze_cpu"] = round(row["old"]["analyze_cpu_s"] / row["new"]["analyze_cpu_s"], 2)
                    row["bound_ratio_new_over_old"] = row["new"].get("bound", float("nan")) / row["old"].get(
                        "bound", float("nan")
                    )
            else:
                row["new"] = run_child(path, None, args.timeout)
            new = row["new"]
            if name.startswith("vit"):
                named = {n for _, n in new.get("refused", [])}
                row["all_attention_named"] = bool(info["attention_matmuls"]) and set(info["attention_matmuls"]) <= named
            tgt = TARGETS.get(name)
            if tgt is not None:
                ok = all(new.get(k, float("inf")) <= v for k, v in tgt.items() if k != "peak_gib")
                if "peak_gib" in tgt:
                    peak = new.get("own_peak_mib", new.get("peak_mib", float("inf")))
                    ok = ok and peak <= tgt["peak_gib"] * 1024
                if name.startswith("vit"):
                    ok = ok and row["all_attention_named"]
                row["target"], row["within_target"] = tgt, ok
            rows.append(row)
            print(
                f"  {name}: {json.dumps({k: v for k, v in row.items() if k != 'attention_matmuls'})[:400]}", flush=True
            )
    measured = {r["model"] for r in rows}
    updated_rows: dict[str, Any] = {}
    if only is not None and args.out.exists():
        # --only re-measures some rows: keep the file's other rows (and their notes) instead of dropping them
        previous = json.loads(args.out.read_text())
        updated_rows = {k: v for k, v in previous.get("updated_rows", {}).items() if k not in measured}
        fresh = {r["model"]: r for r in rows}
        kept = [fresh.pop(r["model"], r) for r in previous.get("rows", [])]
        rows = kept + list(fresh.values())
        given = sys.argv[1:] if argv is None else argv
        command = "OPENBLAS_NUM_THREADS=1 python bench/scale_curve.py " + " ".join(given)
        for name in sorted(measured):
            updated_rows[name] = {
                "command": command,
                "old_ref": args.old_ref,
                "loadavg_1min_end": round(os.getloadavg()[0], 2),
            }
    # Growth: seconds per certificate GFLOP over the conv models (Gram products and factorisations dominate).
    conv = [r for r in rows if r["model"].startswith("resnet") and r["new"].get("gflop")]
    coef = [r["new"]["analyze_cpu_s"] / r["new"]["gflop"] for r in conv]
    growth = {
        "statement": "analyze CPU time ~ c x (certificate GFLOP: Gram products + Cholesky factorisations) + about "
        "0.5 s for loading and shape inference; per conv with m <= n channels and F = half the grid "
        "frequencies, GFLOP ~ min(4 F m^2 n, (T m)^2 n + 4 D F m^2) + 4/3 F m^3 (T taps, D = (2Q-1)^d offsets)",
        "c_s_per_gflop_median": sorted(coef)[len(coef) // 2] if coef else None,
        "c_s_per_gflop_range": [min(coef), max(coef)] if coef else None,
    }
    lines = [
        f"{'model':<14} {'input':>9} {'params':>11} {'GFLOP':>8} {'wall s':>7} {'cpu s':>7} {'peak MiB':>9}"
        f" {'old cpu':>7} {'ratio':>7}  result"
    ]
    for r in rows:
        n, o = r["new"], r.get("old", {})
        res = (
            f"refused {len(n.get('refused', []))} nodes, attention all named: {r.get('all_attention_named')}"
            if "refused" in n
            else f"L = {n.get('bound', float('nan')):.6g}"
            if "bound" in n
            else n.get("error", "")
        )
        if "within_target" in r:
            res += f"  target {r['target']}: {'met' if r['within_target'] else 'MISSED'}"
        lines.append(
            f"{r['model']:<14} {r['input']:>9} {r['parameters']:>11,} {n.get('gflop', 0):>8.1f} "
            f"{n.get('analyze_s', float('nan')):>7.2f} {n.get('analyze_cpu_s', float('nan')):>7.2f} "
            f"{n.get('own_peak_mib', n.get('peak_mib', float('nan'))):>9.0f} "
            f"{o.get('analyze_cpu_s', float('nan')):>7.2f} {r.get('speedup_analyze_cpu', float('nan')):>7.2f}  {res}"
        )
    text = "\n".join(lines)
    text += (
        f"\n\ngrowth: {growth['statement']}; c = {growth['c_s_per_gflop_median']} s/GFLOP "
        f"(range {growth['c_s_per_gflop_range']})\n"
    )
    print(text)
    passed = all(r.get("within_target", True) for r in rows)
    results = {
        "benchmark": "scale_curve",
        "command": "python bench/scale_curve.py"
        + (" --quick" if args.quick else "")
        + (f" --repeat {args.repeat}" if args.repeat != 2 else ""),
        "columns": "wall s / cpu s: the analysis in the child (after imports), one BLAS thread; old cpu: the same "
        f"on commit {args.old_ref}; ratio: old cpu / new cpu (fastest of --repeat runs each)",
        "blas_threads": 1,
        "loadavg_1min_end": round(os.getloadavg()[0], 2),
        "machine": {"cpus": len(os.sched_getaffinity(0))},
        "rows": rows,
        "growth": growth,
        "passed": passed,
        "summary": {r["model"] + " analyze_cpu_s": r["new"].get("analyze_cpu_s") for r in rows}
        | {r["model"] + " speedup": r["speedup_analyze_cpu"] for r in rows if "speedup_analyze_cpu" in r}
        | {"passed": passed},
    }
    if updated_rows:
        results["updated_rows"] = updated_rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
