"""Peak memory of `lipgraph certify` on data larger than memory (issue 13: < 1.5 GB beyond model + runtime).

Generates a float32 ``.npy`` of ``--gb`` gigabytes (CIFAR-shaped samples, written chunk by chunk through a
memory map) in ``--dir`` (default /tmp), certifies a small CNN (plain torch, legacy exporter) on it and on
a 1,000-sample file, both under ``/usr/bin/time -v``, and reports the maximum resident set sizes and their
difference (the data's cost beyond the model, ONNX Runtime and lipgraph themselves). The big file is
deleted at the end. Run once, with ``nice -n 10``; check ``df -h /tmp`` first.

    nice -n 10 python bench/stream_memory.py --gb 6

Writes bench/results/stream_memory.json. Exit 0 when the difference is below 1.5 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LIMIT_GIB = 1.5


def make_model(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.randn(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        )


def make_data(path: Path, samples: int, chunk: int = 20_000) -> None:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(samples, 3, 32, 32))
    rng = np.random.default_rng(0)
    for s in range(0, samples, chunk):
        arr[s : s + chunk] = rng.random((min(chunk, samples - s), 3, 32, 32), dtype=np.float32)
    arr.flush()
    del arr


def timed_certify(model: Path, data: Path, out: Path) -> dict:
    exe = shutil.which("lipgraph") or "lipgraph"
    cmd = [
        "/usr/bin/time",
        "-v",
        exe,
        "certify",
        str(model),
        "--data",
        str(data),
        "--format",
        "json",
        "-o",
        str(out),
        "-q",
        "--batch-size",
        "1024",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "max_rss_mib": round(int(rss.group(1)) / 1024, 1) if rss else None,
        "stderr_tail": proc.stderr[-300:] if proc.returncode else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=6.0)
    ap.add_argument("--dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stream_memory.json")
    args = ap.parse_args()
    samples = int(args.gb * 1e9 // (3 * 32 * 32 * 4))
    work = Path(tempfile.mkdtemp(prefix="lipgraph-stream-", dir=args.dir))
    try:
        model = work / "cnn.onnx"
        make_model(model)
        small, big = work / "small.npy", work / "big.npy"
        make_data(small, 1000)
        t0 = time.perf_counter()
        make_data(big, samples)
        gen_s = time.perf_counter() - t0
        base = timed_certify(model, small, work / "small.json")
        run = timed_certify(model, big, work / "big.json")
        report = json.loads((work / "big.json").read_text()) if run["exit_code"] == 0 else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    extra = (run["max_rss_mib"] or 0) - (base["max_rss_mib"] or 0)
    passed = run["exit_code"] == 0 and extra < LIMIT_GIB * 1024
    res = {
        "benchmark": "stream_memory",
        "command": f"python bench/stream_memory.py --gb {args.gb:g}",
        "data_bytes": samples * 3 * 32 * 32 * 4,
        "samples": samples,
        "generate_s": round(gen_s, 1),
        "small_1000_samples": base,
        "big": run,
        "extra_rss_mib": round(extra, 1),
        "limit_gib": LIMIT_GIB,
        "certified_samples": report.get("samples"),
        "passed": passed,
        "summary": {"extra_rss_MiB": round(extra, 1), "big max_rss_MiB": run["max_rss_mib"], "passed": passed},
    }
    print(
        f"{samples:,} samples ({res['data_bytes'] / 1e9:.2f} GB float32 .npy): max RSS {run['max_rss_mib']} MiB "
        f"(wall {run['wall_s']} s); 1,000 samples: {base['max_rss_mib']} MiB; data's extra {extra:.0f} MiB "
        f"(limit {LIMIT_GIB} GiB): {'met' if passed else 'MISSED'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
