"""Run every benchmark in bench/ and write bench/results/*.json plus bench/results/SUMMARY.md.

Benchmarks are the ``bench/*.py`` scripts other than this one (and ``_*.py`` helpers), run in a fixed
order for the known ones (resnet18_bound, conv_tightness, certify_vs_ort, train_mnist), then the rest
alphabetically. Each runs as its own process from the repository root; by convention it prints a
table and writes ``bench/results/<name>.json``. ``--quick`` is passed through to scripts that accept it.

    python bench/run_all.py            # everything
    python bench/run_all.py --quick    # small sizes, for a smoke run
    python bench/run_all.py --only resnet18_bound --only conv_tightness
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
KNOWN_ORDER = ("resnet18_bound", "conv_tightness", "certify_vs_ort", "train_mnist")


def discover() -> list[str]:
    names = [p.stem for p in BENCH.glob("*.py") if p.stem != "run_all" and not p.stem.startswith("_")]
    known = [n for n in KNOWN_ORDER if n in names]
    return known + sorted(n for n in names if n not in KNOWN_ORDER)


def accepts_quick(script: Path) -> bool:
    """Whether the script declares a ``--quick`` option (an ``add_argument("--quick", ...)`` call)."""
    return re.search(r"""add_argument\(\s*["']--quick["']""", script.read_text(encoding="utf-8", errors="replace")) \
        is not None


BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run_one(name: str, quick: bool, timeout: float, blas_threads: int | None = None) -> dict[str, Any]:
    script = BENCH / f"{name}.py"
    cmd = [sys.executable, str(script.relative_to(ROOT))]
    if quick and accepts_quick(script):
        cmd.append("--quick")
    result_json = RESULTS / f"{name}.json"
    before = result_json.stat().st_mtime if result_json.exists() else None
    print(f"=== {' '.join(['python', *cmd[1:]])}", flush=True)
    t0 = time.perf_counter()
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if blas_threads:
            env.update({k: str(blas_threads) for k in BLAS_ENV})
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = f"timed out after {timeout:g} s"
    wall = time.perf_counter() - t0
    print(out, end="" if out.endswith("\n") or not out else "\n")
    if code not in (0, 1):  # 1: the benchmark ran but missed its target
        print(err[-3000:], file=sys.stderr)
    fresh = result_json.exists() and result_json.stat().st_mtime != before
    data: dict[str, Any] | None = None
    if fresh:
        try:
            data = json.loads(result_json.read_text())
        except json.JSONDecodeError:
            data = None
    return {
        "name": name,
        "command": " ".join(["python", *cmd[1:]]),
        "exit_code": code,
        "wall_s": round(wall, 1),
        "json": str(result_json.relative_to(ROOT)) if fresh else None,
        "data": data,
        "stdout_tail": "\n".join(out.rstrip().splitlines()[-40:]),
        "stderr_tail": "" if code in (0, 1) else err.strip()[-1500:],
    }


def previous(name: str) -> dict[str, Any] | None:
    """A benchmark not run this time but with a JSON from an earlier run (shown as such)."""
    path = RESULTS / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return {"name": name, "command": data.get("command", f"python bench/{name}.py"), "exit_code": "previous",
            "wall_s": float("nan"), "json": str(path.relative_to(ROOT)), "data": data,
            "stdout_tail": f"(not run by this invocation; {path.name} written {when})", "stderr_tail": ""}


def status_of(r: dict[str, Any]) -> str:
    if r["exit_code"] == "previous":
        return "earlier run"
    if r["exit_code"] is None:
        return "timeout"
    if r["exit_code"] == 0:
        return "ok"
    if r["exit_code"] == 1 and r["json"]:
        return "target missed"
    return f"error (exit {r['exit_code']})"


def highlights(data: dict[str, Any] | None, limit: int = 8) -> str:
    """A script's ``summary`` object if it has one, else its top-level scalars."""
    if not data:
        return ""
    src = data.get("summary") if isinstance(data.get("summary"), dict) else data
    items = []
    for k, v in src.items():
        if isinstance(v, bool) or v is None:
            items.append(f"{k}: {v}")
        elif isinstance(v, int | float):
            items.append(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
        elif isinstance(v, str) and len(v) <= 40 and k not in ("description", "command", "benchmark"):
            items.append(f"{k}: {v}")
        if len(items) >= limit:
            break
    return "; ".join(items).replace("|", "\\|")


def summary_md(runs: list[dict[str, Any]], quick: bool, blas_threads: int | None = None) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    flags = (" --quick" if quick else "") + (f" --blas-threads {blas_threads}" if blas_threads else "")
    threads = next((f"{k}={os.environ[k]}" for k in BLAS_ENV if k in os.environ), "library default")
    lines = [
        "# lipgraph benchmarks",
        "",
        f"Generated by `python bench/run_all.py{flags}` on {now}, "
        f"{len(os.sched_getaffinity(0))} CPUs, {platform.platform()}, Python {platform.python_version()}, "
        f"BLAS threads: {blas_threads or threads}, load average {os.getloadavg()[0]:.1f} at the end.",
        "Each row links the JSON the script wrote; the numbers come from that file.",
        "",
        "| benchmark | status | wall s | headline numbers | command | JSON |",
        "|---|---|---:|---|---|---|",
    ]
    for r in runs:
        link = f"[{Path(r['json']).name}]({Path(r['json']).name})" if r["json"] else "-"
        wall = "-" if r["wall_s"] != r["wall_s"] else f"{r['wall_s']:.1f}"
        lines.append(f"| {r['name']} | {status_of(r)} | {wall} | {highlights(r['data'])} | "
                     f"`{r['command']}` | {link} |")
    for r in runs:
        lines += ["", f"## {r['name']}", "", "```", r["stdout_tail"] or "(no output)", "```"]
        if r["stderr_tail"]:
            lines += ["", "stderr (tail):", "", "```", r["stderr_tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run every benchmark in bench/ and write bench/results/.")
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script that accepts it")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these (repeatable)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark (default 1800)")
    ap.add_argument("--blas-threads", type=int, default=None, metavar="N",
                    help="set OPENBLAS/OMP/MKL_NUM_THREADS=N for every benchmark (default: inherit)")
    args = ap.parse_args(argv)

    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; found: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    if not names:
        print("no benchmarks found in bench/", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = [run_one(n, args.quick, args.timeout, args.blas_threads) for n in names]
    others = [p for n in discover() if n not in names and (p := previous(n)) is not None]
    (RESULTS / "SUMMARY.md").write_text(summary_md(runs + others, args.quick, args.blas_threads))
    print("\n" + "\n".join(f"{r['name']:<20} {status_of(r):<16} {r['wall_s']:8.1f} s" for r in runs))
    print(f"wrote {(RESULTS / 'SUMMARY.md').relative_to(ROOT)}")
    return 0 if all(status_of(r) == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
