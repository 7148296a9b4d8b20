"""Peak memory of writing `certify --per-sample`'s JSON report: streamed rows vs the one-string rendering.

A certificate of N samples (synthetic radii, predictions and labels; the report's other parts are small) is
written to a file twice, each in a fresh process: by ``render_json`` (the whole document as one string from
``to_json()``'s list of N row dicts, as the report was written before) and by
``lipgraph.report.json_stream.json_chunks`` (rows rendered chunk by chunk from the arrays). Reported per N:
each process's peak resident memory above its size before writing (VmHWM - VmRSS), its CPU time, and
whether the two files are byte-identical.

    python bench/per_sample_memory.py [--samples 100000 500000]

Writes bench/results/per_sample_memory.json. Exit 0 when the files are identical and the streamed peak is
at most a tenth of the baseline's at the largest N, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status(key: str) -> float:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key))
    return int(line.split()[1]) / 1024


def _child(mode: str, n: int, out: str) -> None:
    import time

    import numpy as np

    from lipgraph.certify import Certificate
    from lipgraph.report.certify import render_json
    from lipgraph.report.json_stream import json_chunks

    rng = np.random.default_rng(0)
    cert = Certificate(
        lipschitz_bound=1.0, samples=n, clean_accuracy=0.5, certified_accuracy={"0.5": 0.1}, median_radius=0.1,
        mean_radius=0.1, radius_method="synthetic", nodes=[], meta={}, eps=[0.5], radii=rng.random(n),
        predictions=rng.integers(0, 10, n), labels=rng.integers(0, 10, n), correct=np.ones(n, dtype=bool),
        per_sample=True,
    )  # fmt: skip
    base, t0 = _status("VmRSS:"), time.process_time()
    with open(out, "w", encoding="utf-8") as fh:
        for part in [render_json(cert)] if mode == "string" else json_chunks(cert):
            fh.write(part)
    res = {"peak_above_start_mib": round(_status("VmHWM:") - base, 1), "cpu_s": round(time.process_time() - t0, 2)}
    print(json.dumps(res))


def run(mode: str, n: int, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--n", str(n), "--file", str(path)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
    res = json.loads(done.stdout.strip().splitlines()[-1])
    res["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    res["bytes"] = path.stat().st_size
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, nargs="+", default=[100_000, 500_000])
    ap.add_argument("--quick", action="store_true", help="10,000 and 50,000 samples")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "per_sample_memory.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.n, args.file)
        return 0
    sizes = [10_000, 50_000] if args.quick else args.samples
    rows = []
    with tempfile.TemporaryDirectory(prefix="lipgraph-rows-") as tmp:
        for n in sizes:
            old = run("string", n, Path(tmp) / "old.json")
            new = run("stream", n, Path(tmp) / "new.json")
            ratio = new["peak_above_start_mib"] / max(old["peak_above_start_mib"], 1e-9)
            rows.append({"samples": n, "string": old, "stream": new, "identical": old["sha256"] == new["sha256"],
                         "peak_ratio_stream_over_string": round(ratio, 4)})  # fmt: skip
    print(f"{'samples':>9} {'MB':>7} {'string MiB':>11} {'stream MiB':>11} {'ratio':>7} {'cpu s':>11}  identical")
    for r in rows:
        o, s = r["string"], r["stream"]
        print(
            f"{r['samples']:>9,} {o['bytes'] / 1e6:>7.1f} {o['peak_above_start_mib']:>11.0f} "
            f"{s['peak_above_start_mib']:>11.0f} {r['peak_ratio_stream_over_string']:>7.3f} "
            f"{o['cpu_s']:>5.1f}/{s['cpu_s']:<5.1f}  {r['identical']}"
        )
    passed = all(r["identical"] for r in rows) and rows[-1]["peak_ratio_stream_over_string"] <= 0.1
    results = {
        "benchmark": "per_sample_memory",
        "command": "python bench/per_sample_memory.py" + (" --quick" if args.quick else ""),
        "rows": rows,
        "passed": passed,
        "summary": {f"stream/string peak at {r['samples']}": r["peak_ratio_stream_over_string"] for r in rows}
        | {"identical": all(r["identical"] for r in rows), "passed": passed},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
