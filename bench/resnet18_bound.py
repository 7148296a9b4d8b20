"""Benchmark: `lipgraph bound` on a CIFAR ResNet-18 exported from torch (issue 2; target <= 20 s, <= 3 GiB).

What it measures, per exporter (torch's default ``dynamo=True`` exporter, the legacy
``dynamo=False`` one, and the legacy one without constant folding so that BatchNormalization nodes stay):

* the whole ``lipgraph bound MODEL --format json`` process, run as a subprocess: wall time and peak
  resident memory (``ru_maxrss`` of that child, from ``os.wait4``);
* an instrumented ``lipgraph.analyze`` (in a fresh process with the same environment) with a time
  breakdown: loading, graph building (shape inference, constant folding), each pass, and each rule
  family / op type. The breakdown wraps the registry's rule functions and the pass list with timers
  at run time; no lipgraph file is modified.

``--blas-threads 1`` sets ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for both
processes. On a busy 2-core machine this matters by 10x or more (the per-frequency eigensolves of the
conv bound are small LAPACK calls whose OpenBLAS threads busy-wait); the JSON records the load average.

Run from the repository root::

    python bench/resnet18_bound.py            # three exports, writes bench/results/resnet18_bound.json
    python bench/resnet18_bound.py --quick    # torch's default (dynamo) exporter only
    python bench/resnet18_bound.py --profile  # also a cProfile of analyze() (top 25 by cumulative time)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S = 20.0
TARGET_GIB = 3.0


EXPORTERS = ("dynamo", "legacy", "legacy-bn")


def export_resnet18(path: Path, exporter: str, seed: int = 0) -> dict[str, Any]:
    """Export with torch's default exporter ("dynamo"), the legacy one ("legacy"), or the legacy one
    without constant folding ("legacy-bn"), which keeps the 20 BatchNormalization nodes for lipgraph
    to fold (both other exporters fold BN into the convs themselves)."""
    import torch

    from tests.e2e.resnet import make_resnet18

    model = make_resnet18(seed)
    x = torch.randn(1, 3, 32, 32)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"], output_names=["logits"],
                              verbose=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["logits"], do_constant_folding=exporter != "legacy-bn")
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "export_s": round(time.perf_counter() - t0, 2),
        "nodes": len(m.graph.node),
        "op_counts": ops,
        "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None),
        "parameters": n_params,
        "size_mib": round(sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file()) / 2**20, 1),
    }


def _lipgraph_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("lipgraph")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("lipgraph")
    return [found] if found else [sys.executable, "-m", "lipgraph"]


BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run_cli(model: Path, out_json: Path, blas_threads: int | None) -> dict[str, Any]:
    """The whole `lipgraph bound` process: wall time, peak RSS (this child only), exit code."""
    cmd = [*_lipgraph_cmd(), "bound", str(model), "--format", "json", "-o", str(out_json)]
    env = dict(os.environ)
    if blas_threads:
        env.update({k: str(blas_threads) for k in BLAS_ENV})
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
    res: dict[str, Any] = {
        "command": " ".join(["lipgraph", *cmd[-6:]]) if len(cmd) == 7 else " ".join(cmd),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
    }
    if proc.returncode == 0:
        res["bound"] = json.loads(out_json.read_text())["lipschitz_bound"]
    else:
        res["stderr"] = stderr[:2000]
    return res


class _Timers:
    def __init__(self) -> None:
        # [wall s, calls, cpu s (all threads of this process)]
        self.families: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0.0])
        self.ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0.0])
        self.stages: dict[str, float] = defaultdict(float)

    def add(self, table: dict[str, list[float]], key: str, dt: float, dcpu: float) -> None:
        table[key][0] += dt
        table[key][1] += 1
        table[key][2] += dcpu


def _instrument(timers: _Timers) -> list[tuple[Any, str, Any]]:
    """Wrap rule functions, passes, loading and graph building with timers; return what to restore."""
    import importlib

    # `lipgraph.analyze` the attribute is the function; the module is in sys.modules.
    an = importlib.import_module("lipgraph.analyze")
    passes = importlib.import_module("lipgraph.passes")
    from lipgraph.rules import load_rules
    from lipgraph.rules import registry as reg

    load_rules()
    restore: list[tuple[Any, str, Any]] = []

    for versions in reg._REGISTRY.values():
        for since, spec in list(versions.items()):
            def timed(ctx: Any, _fn: Any = spec.fn, _spec: Any = spec) -> Any:
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    return _fn(ctx)
                finally:
                    dt, dc = time.perf_counter() - t0, time.process_time() - c0
                    op = _spec.op_type + (f" ({_spec.domain})" if _spec.domain != "ai.onnx" else "")
                    timers.add(timers.families, _spec.family, dt, dc)
                    timers.add(timers.ops, op, dt, dc)

            versions[since] = dataclasses.replace(spec, fn=timed)
            restore.append((versions, since, spec))

    def wrap_stage(name: str, fn: Any) -> Any:
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers.stages[name] += time.perf_counter() - t0
        return timed

    for mod, attr, label in ((an, "load_model", "load"), (an, "build_graph", "build_graph (shapes, folding)")):
        orig = getattr(mod, attr)
        setattr(mod, attr, wrap_stage(label, orig))
        restore.append((mod, attr, orig))

    orig_default = passes.default_passes

    def default_passes_timed() -> list[Any]:
        return [wrap_stage(f"pass {p.__module__.rsplit('.', 1)[-1]}.{p.__name__}", p) for p in orig_default()]

    passes.default_passes = default_passes_timed
    restore.append((passes, "default_passes", orig_default))
    return restore


def _uninstrument(restore: list[tuple[Any, str, Any]]) -> None:
    for obj, key, orig in reversed(restore):
        if isinstance(obj, dict):
            obj[key] = orig
        else:
            setattr(obj, key, orig)


def run_breakdown_child(model: Path, profile: bool, blas_threads: int | None) -> dict[str, Any]:
    """The instrumented analyze() in a fresh process with the CLI's environment.

    Not in this process: torch is loaded here, and thread limits set after OpenBLAS started
    (threadpoolctl) were measured 10x slower than ``OPENBLAS_NUM_THREADS=1`` at process start.
    """
    env = dict(os.environ)
    if blas_threads:
        env.update({k: str(blas_threads) for k in BLAS_ENV})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "breakdown.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--breakdown", str(model), "--out", str(out)]
        proc = subprocess.run(cmd + (["--profile"] if profile else []), env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()[-2000:]}
        return json.loads(out.read_text())


def run_in_process(model: Path, profile: bool) -> dict[str, Any]:
    import contextlib

    from lipgraph.analyze import analyze

    timers = _Timers()
    restore = _instrument(timers)
    prof = None
    try:
        with contextlib.nullcontext():
            t0, c0 = time.perf_counter(), time.process_time()
            if profile:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            analysis = analyze(str(model))
            if prof is not None:
                prof.disable()
            total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    finally:
        _uninstrument(restore)
    rules_total = sum(v[0] for v in timers.families.values())
    out: dict[str, Any] = {
        "total_s": round(total, 3),
        "cpu_s": round(cpu_total, 3),
        "bound": analysis.bound,
        "stages_s": {k: round(v, 3) for k, v in timers.stages.items()},
        "rules_s": round(rules_total, 3),
        "families": {k: {"time_s": round(v[0], 3), "cpu_s": round(v[2], 3), "calls": v[1]}
                     for k, v in sorted(timers.families.items(), key=lambda kv: -kv[1][0])},
        "ops": {k: {"time_s": round(v[0], 3), "cpu_s": round(v[2], 3), "calls": v[1]}
                for k, v in sorted(timers.ops.items(), key=lambda kv: -kv[1][0])},
        "methods": sorted({n.method for n in analysis.nodes if n.op_type in ("Conv", "Gemm", "MatMul")}
                          | {n.method for n in analysis.nodes if "onv" in n.op_type}),
        "nodes_analyzed": len(analysis.nodes),
    }
    if prof is not None:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        out["profile_top"] = buf.getvalue()
    return out


def render(results: dict[str, Any]) -> str:
    lines = [f"ResNet-18 (CIFAR, 3x32x32) `lipgraph bound`: target <= {TARGET_S:g} s, <= {TARGET_GIB:g} GiB "
             f"({results['machine']['cpus']} CPUs, BLAS threads: {results['blas_threads']})", ""]
    lines.append(f"{'exporter':<9} {'nodes':>5} {'CLI wall s':>10} {'CLI cpu s':>9} {'peak MiB':>9} "
                 f"{'in-proc s':>9} {'bound':>12}  ok")
    for r in results["runs"]:
        cli, ip = r["cli"], r.get("in_process", {})
        lines.append(f"{r['exporter']:<9} {r['export']['nodes']:>5} {cli['wall_s']:>10.2f} {cli['cpu_s']:>9.2f} "
                     f"{cli['peak_rss_mib']:>9.0f} {ip.get('total_s', float('nan')):>9.2f} "
                     f"{cli.get('bound', float('nan')):>12.5g}  {'yes' if r['within_target'] else 'NO'}"
                     f"  (load {cli['loadavg_1min_before']:.1f} before)")
        if cli["exit_code"] != 0:
            lines.append(f"    exit {cli['exit_code']}: {cli.get('stderr', '')[:400]}")
    for r in results["runs"]:
        ip = r.get("in_process")
        if not ip or "error" in ip:
            if ip:
                lines.append(f"[{r['exporter']}] in-process breakdown failed: {ip['error'][:400]}")
            continue
        lines += ["", f"[{r['exporter']}] in-process breakdown (total {ip['total_s']:.2f} s wall, "
                  f"{ip['cpu_s']:.2f} s cpu)"]
        for k, v in ip["stages_s"].items():
            lines.append(f"  {k:<40} {v:8.3f} s")
        lines.append(f"  {'rules (all)':<40} {ip['rules_s']:8.3f} s")
        for k, v in ip["families"].items():
            lines.append(f"    family {k:<31} {v['time_s']:8.3f} s  cpu {v['cpu_s']:8.3f} s  ({v['calls']} nodes)")
        for k, v in list(ip["ops"].items())[:8]:
            lines.append(f"      op {k:<31} {v['time_s']:8.3f} s  cpu {v['cpu_s']:8.3f} s  ({v['calls']} nodes)")
        if ip.get("methods"):
            lines.append(f"  linear-op methods: {', '.join(ip['methods'])[:300]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="torch's default exporter only")
    ap.add_argument("--exporters", default=",".join(EXPORTERS),
                    help=f"comma-separated subset of {','.join(EXPORTERS)} (default: all)")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process analyze()")
    ap.add_argument("--blas-threads", type=int, default=None, metavar="N",
                    help="limit BLAS/OpenMP threads (env for the CLI, threadpoolctl in-process)")
    ap.add_argument("--no-in-process", action="store_true", help="skip the in-process breakdown (CLI timing only)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "resnet18_bound.json")
    ap.add_argument("--breakdown", type=Path, help=argparse.SUPPRESS)  # internal: the child of run_breakdown_child
    args = ap.parse_args(argv)
    if args.breakdown:
        args.out.write_text(json.dumps(run_in_process(args.breakdown, args.profile)))
        return 0

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    exporters = ["dynamo"] if args.quick else [e.strip() for e in args.exporters.split(",") if e.strip()]
    bad = [e for e in exporters if e not in EXPORTERS]
    if bad:
        ap.error(f"unknown exporter(s) {bad}; choose from {EXPORTERS}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="lipgraph-bench-") as tmp:
        for name in exporters:
            d = Path(tmp) / name
            d.mkdir()
            model = d / "resnet18.onnx"
            info = export_resnet18(model, name)
            load_before = os.getloadavg()[0]
            cli = run_cli(model, d / "bound.json", args.blas_threads)
            cli["loadavg_1min_before"] = round(load_before, 2)
            run: dict[str, Any] = {"exporter": name, "export": info, "cli": cli}
            if cli["exit_code"] == 0 and not args.no_in_process:
                run["in_process"] = run_breakdown_child(model, args.profile, args.blas_threads)
            run["within_target"] = (cli["exit_code"] == 0 and cli["wall_s"] <= TARGET_S
                                    and cli["peak_rss_mib"] <= TARGET_GIB * 1024)
            runs.append(run)
    results = {
        "benchmark": "resnet18_bound",
        "description": "lipgraph bound on a random-init CIFAR ResNet-18 (BN eval mode, randomized statistics)",
        "targets": {"wall_s": TARGET_S, "peak_gib": TARGET_GIB},
        "blas_threads": args.blas_threads or "library default",
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "command": "python bench/resnet18_bound.py" + (" --quick" if args.quick else "")
        + (f" --exporters {args.exporters}" if args.exporters != ",".join(EXPORTERS) else "")
        + (f" --blas-threads {args.blas_threads}" if args.blas_threads else ""),
        "runs": runs,
        "passed": all(r["within_target"] for r in runs),
    }
    # A few headline numbers for bench/run_all.py's SUMMARY.md.
    results["summary"] = {
        f"{r['exporter']} {k}": v
        for r in runs
        for k, v in (("wall_s", r["cli"]["wall_s"]), ("peak_MiB", r["cli"]["peak_rss_mib"]),
                     ("bound", r["cli"].get("bound")))
    } | {"passed": results["passed"]}
    text = render(results)
    print(text, end="")
    for r in runs:
        if "profile_top" in r.get("in_process", {}):
            print(f"\n[{r['exporter']}] cProfile (cumulative):\n" + r["in_process"]["profile_top"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
