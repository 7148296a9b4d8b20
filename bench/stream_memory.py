"""Peak memory of `lipgraph certify` on data larger than memory (issue 13: < 1.5 GB beyond model + runtime).

Generates a float32 ``.npy`` of ``--gb`` gigabytes (CIFAR-shaped samples, written chunk by chunk through a
memory map) in ``--dir`` (default /tmp), certifies a small CNN (plain torch, legacy exporter) on it and on
a 1,000-sample file, both under ``/usr/bin/time -v``, and reports the maximum resident set sizes and their
difference (the data's cost beyond the model, ONNX Runtime and lipgraph themselves). Beside them, the peaks
of RssAnon and RssFile sampled from /proc every 20 ms (Linux): max RSS counts file-backed pages too, RssAnon
is what the run allocated. ``--repeat K`` certifies the big file K times (the run-to-run spread). The big
file is deleted at the end. Run with ``nice -n 10``; check ``df -h /tmp`` first.

    nice -n 10 python bench/stream_memory.py --gb 6
    nice -n 10 python bench/stream_memory.py --gb 2 --repeat 3 --out bench/results/stream_memory_2gb.json

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
import threading
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


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``/usr/bin/time`` -> the ``lipgraph`` launcher -> Python)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                continue
    return out


def _memory_kib(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in text.splitlines()) if k in FIELDS}


FIELDS = ("VmRSS", "RssAnon", "RssFile")


class Sampler(threading.Thread):
    """Peaks of RssAnon / RssFile / VmRSS of the process tree, read from /proc every ``period`` seconds.

    /usr/bin/time's "Maximum resident set size" counts file-backed pages too (a mapped data file's pages, the
    shared libraries); the sampled RssAnon says what the run itself allocated. Sampled peaks can miss a spike
    shorter than the period: they are a floor, /usr/bin/time's figure the ceiling.
    """

    def __init__(self, pid: int, period: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak = dict.fromkeys(FIELDS, 0)
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for p in _descendants(self.pid):
                mem = _memory_kib(p)
                for k in FIELDS:
                    self.peak[k] = max(self.peak[k], mem.get(k, 0))
            self.samples += 1
            self._halt.wait(self.period)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        return {f"peak_{k.lower()}_mib_sampled": round(v / 1024, 1) for k, v in self.peak.items()}


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
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
    )
    sampler = Sampler(proc.pid)
    sampler.start()
    _, stderr = proc.communicate()
    peaks = sampler.stop()
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "max_rss_mib": round(int(rss.group(1)) / 1024, 1) if rss else None,
        **peaks,
        "samples_of_proc": sampler.samples,
        "stderr_tail": stderr[-300:] if proc.returncode else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=1, help="certify the big file this many times (the spread)")
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
        runs = [timed_certify(model, big, work / "big.json") for _ in range(max(args.repeat, 1))]
        report = json.loads((work / "big.json").read_text()) if runs[-1]["exit_code"] == 0 else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    worst = max(runs, key=lambda r: r["max_rss_mib"] or 0)
    extra = (worst["max_rss_mib"] or 0) - (base["max_rss_mib"] or 0)
    passed = all(r["exit_code"] == 0 for r in runs) and extra < LIMIT_GIB * 1024
    rss = [r["max_rss_mib"] for r in runs]
    anon = [r["peak_rssanon_mib_sampled"] for r in runs]
    file_ = [r["peak_rssfile_mib_sampled"] for r in runs]
    res = {
        "benchmark": "stream_memory",
        "command": f"python bench/stream_memory.py --gb {args.gb:g}"
        + (f" --repeat {args.repeat}" if args.repeat > 1 else ""),
        "data_bytes": samples * 3 * 32 * 32 * 4,
        "samples": samples,
        "generate_s": round(gen_s, 1),
        "small_1000_samples": base,
        "big": worst,
        "big_runs": runs,
        "extra_rss_mib": round(extra, 1),
        "limit_gib": LIMIT_GIB,
        "certified_samples": report.get("samples"),
        "passed": passed,
        "summary": {
            "extra_rss_MiB": round(extra, 1),
            "big max_rss_MiB": rss,
            "big peak RssAnon_MiB (sampled)": anon,
            "big peak RssFile_MiB (sampled)": file_,
            "small max_rss_MiB": base["max_rss_mib"],
            "small peak RssAnon_MiB (sampled)": base["peak_rssanon_mib_sampled"],
            "passed": passed,
        },
    }
    print(
        f"{samples:,} samples ({res['data_bytes'] / 1e9:.2f} GB float32 .npy), {len(runs)} run(s): max RSS {rss} MiB, "
        f"peak RssAnon {anon} MiB, peak RssFile {file_} MiB (sampled; wall {[r['wall_s'] for r in runs]} s); "
        f"1,000 samples: max RSS {base['max_rss_mib']} MiB, RssAnon {base['peak_rssanon_mib_sampled']} MiB; "
        f"data's extra (worst run) {extra:.0f} MiB (limit {LIMIT_GIB} GiB): {'met' if passed else 'MISSED'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
