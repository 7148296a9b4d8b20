"""Benchmark: bounds of the ops torch writes as several nodes (issue 15, class 9), both exporters.

For each op: lipgraph's bound with every pass (``bound``), the bound of the per-op rules alone
(``generic``: only the final-softmax pass, the baseline measured in the same run), and the truth
(``truth``): for linear ops the exact norm of the exported file's dense matrix (onnxruntime on basis
vectors); for activations torch's float64 derivative maximised on a dense grid; for LPPool torch's
float64 Jacobian norm near every basis vector. Ratios ``bound / truth`` (>= 1: sound) and
``generic / bound`` (how much the patterns gain; inf: the per-op rules refuse).

    python bench/pattern_tightness.py

Prints a table and writes bench/results/pattern_tightness.json.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import onnx  # noqa: E402
import torch  # noqa: E402

from lipgraph import passes as lg_passes  # noqa: E402
from lipgraph.analyze import analyze  # noqa: E402
from lipgraph.errors import LipgraphError  # noqa: E402
from lipgraph.passes import logits as logits_pass  # noqa: E402
from tests.e2e.test_exported_patterns import ACTIVATIONS, LINEAR, LPPOOL, _module  # noqa: E402
from tests.helpers.onnx_oracle import exact_norm  # noqa: E402


def _export(name: str, dynamo: bool, folder: str) -> str | None:
    model, shape = _module(name)
    path = f"{folder}/{name}_{int(dynamo)}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if dynamo:
                torch.onnx.export(
                    model,
                    (torch.randn(*shape),),
                    path,
                    dynamo=True,
                    opset_version=18,
                    input_names=["x"],
                    verbose=False,
                    optimize=True,
                )
            else:
                torch.onnx.export(
                    model, (torch.randn(*shape),), path, dynamo=False, opset_version=17, input_names=["x"]
                )
        except Exception:  # noqa: BLE001 - the legacy exporter cannot write some ops
            return None
    return path


def _truth(name: str, path: str) -> float:
    model, shape = _module(name)
    if name in LINEAR:
        return exact_norm(onnx.load(path), shape)
    model = model.double()
    if name in ACTIVATIONS:
        x = torch.linspace(-8, 8, shape[1], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(model(x).sum(), x)
        return float(g.abs().max())
    n = int(np.prod(shape))
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for i in range(n):
        p = torch.eye(n, dtype=torch.float64)[i] + 1e-2 * torch.randn(n, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(model, p.reshape(shape)).reshape(-1, n)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


def _bound(path: str, generic: bool) -> float:
    saved = lg_passes.default_passes
    if generic:
        lg_passes.default_passes = lambda: [logits_pass.cut_final_softmax]
    try:
        return analyze(path).bound
    except LipgraphError:
        return math.inf
    finally:
        lg_passes.default_passes = saved


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in [*ACTIVATIONS, *LINEAR, *LPPOOL]:
            for dynamo in (False, True):
                path = _export(name, dynamo, folder)
                exporter = "dynamo" if dynamo else "legacy"
                if path is None:
                    rows.append({"op": name, "exporter": exporter, "note": "export fails (torch 2.13)"})
                    continue
                t0 = time.perf_counter()
                bound = _bound(path, generic=False)
                seconds = time.perf_counter() - t0
                rows.append(
                    {
                        "op": name,
                        "exporter": exporter,
                        "bound": bound,
                        "generic": _bound(path, True),
                        "truth": _truth(name, path),
                        "seconds": seconds,
                    }
                )
    print(
        f"{'op':22s} {'exporter':8s} {'bound':>10s} {'truth':>10s} {'bound/truth':>11s} {'generic':>10s} "
        f"{'generic/bound':>13s} {'s':>6s}"
    )
    for r in rows:
        if "note" in r:
            print(f"{r['op']:22s} {r['exporter']:8s} {r['note']}")
            continue
        ratio = r["bound"] / r["truth"] if math.isfinite(r["bound"]) else math.inf
        gain = r["generic"] / r["bound"] if math.isfinite(r["bound"]) else math.nan
        print(
            f"{r['op']:22s} {r['exporter']:8s} {r['bound']:10.6f} {r['truth']:10.6f} {ratio:11.6f} "
            f"{r['generic']:10.4g} {gain:13.4g} {r['seconds']:6.2f}"
        )
    out = HERE / "results" / "pattern_tightness.json"
    out.parent.mkdir(exist_ok=True)
    clean = [
        {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)) for k, v in r.items()} for r in rows
    ]
    out.write_text(json.dumps({"torch": torch.__version__, "rows": clean}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
