"""Tightness on the published 1-Lipschitz layer families: family x model x exporter -> bound vs truth.

For every model in tests/families (Cayley, LOT, BCOP, AOL, LiResNet, deel-torchlip, plain circular
convs, and the families other modules add), exported with torch's legacy (``dynamo=False``) and dynamo
exporters, it reports:

* ``bound``: ``lipgraph.analyze`` with the default passes;
* ``bound_old``: the same with the family passes removed (circular convs, linear regions, MaxMin via
  Where / open pair sorts, power series, residual / plain / circular sandwiches): the op-by-op
  baseline, measured in the same run;
* ``lower`` / ``upper``: the true constant's range from the model's own oracle (exact dense-Jacobian
  SVD for linear nets; a Jacobian lower estimate and the family's certificate or the product of exact
  stage norms for nonlinear ones), independent of lipgraph;
* ``ratio`` = bound / upper (<= 1.01 is "tight"), ``old_ratio`` = bound_old / upper, and the analysis
  time (``analyze`` wall time, the graph already in memory).

    python bench/lipschitz_families.py [--quick]      # --quick: legacy exporter only
    python bench/lipschitz_families.py --markdown     # print the README table from the saved JSON

Writes bench/results/lipschitz_families.json. Exit 0 when every bound is sound (>= lower) and tight
(<= 1.01 upper) and nothing is refused, 1 otherwise. Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NEW_PASSES = {"circular_conv", "linear_maps", "sorting_variants", "power_series", "sandwiches", "conv_sandwiches"}


def _analyze(proto, old: bool) -> tuple[float | None, float, str]:
    from lipgraph import analyze
    from lipgraph.errors import LipgraphError
    from lipgraph.passes import PASS_ORDER

    saved = list(PASS_ORDER)
    if old:
        PASS_ORDER[:] = [p for p in PASS_ORDER if p.module not in NEW_PASSES]
    try:
        t0 = time.perf_counter()
        bound = analyze(proto).bound
        return bound, time.perf_counter() - t0, ""
    except LipgraphError as exc:
        return None, 0.0, str(exc).splitlines()[0][:120]
    finally:
        PASS_ORDER[:] = saved


def markdown_table(results: dict) -> str:
    """One README row per family x model: bound per exporter, the truth range, the worst ratio, times."""
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for r in results["rows"]:
        by_key.setdefault((r["family"], r["model"]), {})[r["exporter"]] = r

    def num(v: float | None, p: int = 4) -> str:
        return "refused" if v is None else f"{v:.{p}f}"

    lines = [
        "| family | model | bound (legacy / dynamo) | truth range | bound / upper | op by op / upper | time s |",
        "|---|---|---|---|---|---|---|",
    ]
    for (family, model), ex in by_key.items():
        rows = [ex[e] for e in ("legacy", "dynamo") if e in ex]
        bounds = " / ".join(num(r["bound"]) for r in rows)
        lo, up = rows[0]["lower"], rows[0]["upper"]
        truth = f"{up:.4f}" if abs(up - lo) <= 1e-6 * up else f"[{lo:.4f}, {up:.4f}]"
        ratios = [r["ratio"] for r in rows]
        ratio = "refused" if None in ratios else f"{max(ratios):.3f}"
        olds = [r["old_ratio"] for r in rows]
        old = "refused" if None in olds else " / ".join(f"{v:.2f}" for v in olds)
        times = " / ".join(f"{r['time_s']:.3f}" for r in rows)
        lines.append(f"| {family} | {model} | {bounds} | {truth} | {ratio} | {old} | {times} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="legacy exporter only")
    ap.add_argument("--markdown", action="store_true", help="print the README table from the saved results")
    args = ap.parse_args()
    if args.markdown:
        print(markdown_table(json.loads((ROOT / "bench" / "results" / "lipschitz_families.json").read_text())))
        return 0
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    from tests.families import all_models, export_onnx

    models = all_models()
    if models:  # warm up (rule registry, imports) so that the first row's time is the analysis alone
        _analyze(export_onnx(models[0].build(), models[0].input_shape, False), old=False)
    rows = []
    for fm in models:
        model = fm.build()
        lower, upper = fm.true_constant(model)
        for dynamo in (False,) if args.quick else (False, True):
            proto = export_onnx(model, fm.input_shape, dynamo)
            bound, secs, err = _analyze(proto, old=False)
            old, _, old_err = _analyze(proto, old=True)
            row = {
                "family": fm.family,
                "model": fm.name,
                "exporter": "dynamo" if dynamo else "legacy",
                "bound": bound,
                "bound_old": old,
                "lower": lower,
                "upper": upper,
                "ratio": bound / upper if bound is not None else None,
                "old_ratio": old / upper if old is not None else None,
                "time_s": round(secs, 4),
                "refused": err or None,
                "old_refused": old_err or None,
            }
            row["sound"] = bound is not None and bound >= lower * (1 - 1e-5)
            row["tight"] = bound is not None and bound <= 1.01 * upper
            rows.append(row)

    def fmt(v: float | None, p: int = 4) -> str:
        return "refused" if v is None else f"{v:.{p}f}"

    print(f"{'family':32s} {'model':12s} {'export':7s} {'bound':>9s} {'lower':>9s} {'upper':>9s} "
          f"{'ratio':>7s} {'old':>9s} {'old/up':>8s} {'time s':>7s}")  # fmt: skip
    for r in rows:
        print(f"{r['family'][:32]:32s} {r['model']:12s} {r['exporter']:7s} {fmt(r['bound'])} {r['lower']:9.4f} "
              f"{r['upper']:9.4f} {fmt(r['ratio'], 3):>7s} {fmt(r['bound_old']):>9s} {fmt(r['old_ratio'], 2):>8s} "
              f"{r['time_s']:7.3f}")  # fmt: skip
    ok = all(r["sound"] and r["tight"] for r in rows)
    n_tight = sum(r["tight"] for r in rows)
    n_old = sum(1 for r in rows if r["old_ratio"] is not None and r["old_ratio"] <= 1.01)
    print(f"\ntight (<= 1.01 x upper): {n_tight}/{len(rows)} now, {n_old}/{len(rows)} without the new passes; "
          f"max analysis time {max(r['time_s'] for r in rows):.3f} s")  # fmt: skip
    out = {
        "rows": rows,
        "tight": n_tight,
        "tight_without_new_passes": n_old,
        "total": len(rows),
        "all_sound_and_tight": ok,
        "max_time_s": max(r["time_s"] for r in rows),
        "quick": args.quick,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    tmp = results / "lipschitz_families.json.tmp"
    tmp.write_text(json.dumps(out, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    os.replace(tmp, results / "lipschitz_families.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
