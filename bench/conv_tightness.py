"""Conv bound tightness: lipgraph's bounds against the exact norm of the op's dense matrix.

For a few hundred random Conv layers (1-D/2-D/3-D; kernels 1-5, strides 1-3, dilations 1-2, groups
and depthwise, explicit symmetric/asymmetric pads and auto_pad, inputs 3..16 px, 1..16 channels), the
exact norm is the largest singular value of the dense matrix obtained by running every basis vector
through onnxruntime (tests/rules/conv_oracle.py). Reported per case: exact, the circulant (polyphase)
bound, the LMT overlap bound, and the bound the Conv rule uses (``conv_bound``: exact dense SVD when
small, else circulant), each with its ratio to the exact norm.

A dozen wider layers (16 channels, 8..11 px) follow, where the rule itself uses the circulant bound.

    python bench/conv_tightness.py [--quick] [--cases N] [--seed S]

Writes bench/results/conv_tightness.json. Exit 0 when every bound is >= exact and the rule's bound
is <= 1.10x exact, 1 otherwise. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lipgraph.norms.conv import (  # noqa: E402
    conv_bound,
    conv_circulant_bound,
    conv_lmt_bound,
    output_size,
    resolve_pads,
)
from tests.rules.conv_oracle import exact_norm  # noqa: E402

TIGHT = 1.10
TOL = 1e-9


def random_case(rng: np.random.Generator) -> dict | None:
    d = int(rng.choice([1, 2, 2, 2, 3]))
    kmax = 6 if d < 3 else 4
    k = [int(rng.integers(1, kmax)) for _ in range(d)]
    s = [int(rng.choice([1, 1, 2, 2, 3])) for _ in range(d)]
    dil = [int(rng.choice([1, 1, 1, 2])) for _ in range(d)]
    groups = int(rng.choice([1, 1, 1, 2, 4]))
    depthwise = groups > 1 and rng.random() < 0.4
    cg = 1 if depthwise else int(rng.integers(1, 9 if groups == 1 else 4))
    mg = int(rng.integers(1, 3)) if depthwise else int(rng.integers(1, 9 if groups == 1 else 4))
    nmax = {1: 17, 2: 17, 3: 7}[d]
    n = [int(rng.integers(3, nmax)) for _ in range(d)]
    mode = str(rng.choice(["NOTSET", "NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if mode.startswith("SAME"):
        dil = [1] * d  # onnxruntime does not run SAME with dilation
    pads = [int(rng.integers(0, max(1, ((kk - 1) * dl) // 2 + 2))) for kk, dl in zip(k * 2, dil * 2, strict=True)]
    if rng.random() < 0.5 and mode == "NOTSET":
        pads = [(kk - 1) * dl // 2 for kk, dl in zip(k * 2, dil * 2, strict=True)]  # symmetric "same-ish"
    try:
        pb, pe = resolve_pads(n, k, s, dil, pads if mode == "NOTSET" else None, mode)
    except ValueError:
        return None
    outs = [output_size(*a) for a in zip(n, k, s, dil, pb, pe, strict=True)]
    if min(outs) <= 0:
        return None
    cin = groups * cg
    if cin * int(np.prod(n)) > 1600 or groups * mg * int(np.prod(outs)) > 4000:
        return None
    return {
        "spatial": n, "kernel": k, "strides": s, "dilations": dil, "groups": groups,
        "cin": cin, "cout": groups * mg, "auto_pad": mode, "pads": pads if mode == "NOTSET" else None,
        "pads_begin": list(pb), "pads_end": list(pe),
    }


def wide_case(rng: np.random.Generator) -> dict:
    """16 channels at 8..11 px, 3x3, stride 1 or 2, pad 1: too big for the rule's dense path, so the
    rule uses the circulant bound (the oracle's dense SVD is still affordable)."""
    n = int(rng.integers(8, 12))
    s = int(rng.choice([1, 2]))
    return {
        "spatial": [n, n], "kernel": [3, 3], "strides": [s, s], "dilations": [1, 1], "groups": 1,
        "cin": 16, "cout": 16, "auto_pad": "NOTSET", "pads": [1, 1, 1, 1],
        "pads_begin": [1, 1], "pads_end": [1, 1],
    }


def evaluate(case: dict, rng: np.random.Generator) -> dict:
    g = case["groups"]
    w = rng.standard_normal((case["cout"], case["cin"] // g, *case["kernel"])).astype(np.float32)
    attrs = {"strides": case["strides"], "dilations": case["dilations"], "group": g, "auto_pad": case["auto_pad"]}
    if case["pads"] is not None:
        attrs["pads"] = case["pads"]
    exact = exact_norm("Conv", w, (1, case["cin"], *case["spatial"]), **attrs)
    args = (w, g, case["strides"], case["dilations"], case["pads_begin"], case["pads_end"], case["spatial"])
    t0 = time.perf_counter()
    circ = conv_circulant_bound(*args)
    t_circ = time.perf_counter() - t0
    lmt = conv_lmt_bound(w, g, case["strides"], case["dilations"])
    rule = conv_bound(*args, want_lower=False)
    return {
        **case,
        "exact": exact,
        "circulant": circ.value,
        "circulant_method": circ.method,
        "circulant_s": t_circ,
        "lmt": lmt.value,
        "rule": rule.value,
        "rule_method": rule.method,
    }


def label(r: dict) -> str:
    sp = "x".join(map(str, r["spatial"]))
    k = "x".join(map(str, r["kernel"]))
    pad = r["auto_pad"] if r["pads"] is None else "p" + ",".join(map(str, r["pads"]))
    extra = ""
    if any(v != 1 for v in r["strides"]):
        extra += " s" + "x".join(map(str, r["strides"]))
    if any(v != 1 for v in r["dilations"]):
        extra += " d" + "x".join(map(str, r["dilations"]))
    if r["groups"] > 1:
        extra += f" g{r['groups']}"
    return f"{r['cin']}->{r['cout']} n{sp} k{k}{extra} {pad}"


def stats(x: np.ndarray) -> dict:
    return {"median": float(np.median(x)), "p90": float(np.percentile(x, 90)), "max": float(x.max()),
            "min": float(x.min())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 cases instead of 300")
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n_cases = args.cases or (60 if args.quick else 300)
    rng = np.random.default_rng(args.seed)
    rows: list[dict] = []
    t0 = time.perf_counter()
    while len(rows) < n_cases:
        case = random_case(rng)
        if case is None:
            continue
        rows.append(evaluate(case, rng))
    for _ in range(3 if args.quick else 12):
        rows.append(evaluate(wide_case(rng), rng))
    wall = time.perf_counter() - t0

    print(f"{'case':<44} {'exact':>9} {'circ':>9} {'ratio':>7} {'LMT':>9} {'ratio':>7} {'rule':>7}")
    for r in rows:
        e = r["exact"]
        rc = r["circulant"] / e if e > 0 else float("nan")
        rl = r["lmt"] / e if e > 0 else float("nan")
        rr = r["rule"] / e if e > 0 else float("nan")
        print(f"{label(r):<44} {e:9.4f} {r['circulant']:9.4f} {rc:7.4f} {r['lmt']:9.4f} {rl:7.4f} {rr:7.4f}")

    nz = [r for r in rows if r["exact"] > 1e-6]
    circ = np.array([r["circulant"] / r["exact"] for r in nz])
    lmt = np.array([r["lmt"] / r["exact"] for r in nz])
    rule = np.array([r["rule"] / r["exact"] for r in nz])
    big = np.array([r["circulant"] / r["exact"] for r in nz if min(r["spatial"]) >= 8])
    wide = np.array([r["rule"] / r["exact"] for r in nz if r["rule_method"].startswith("circulant")])
    sound = all(
        min(r["circulant"], r["lmt"], r["rule"]) >= r["exact"] * (1 - TOL) for r in rows
    )
    tight = bool(rule.max() <= TIGHT)
    summary = {
        "cases": len(rows),
        "rule_ratio_median": round(float(np.median(rule)), 4),
        "rule_ratio_max": round(float(rule.max()), 4),
        "circulant_ratio_median": round(float(np.median(circ)), 4),
        "circulant_ratio_max": round(float(circ.max()), 4),
        "circulant_ratio_median_inputs_ge_8px": round(float(np.median(big)), 4) if big.size else None,
        "lmt_ratio_median": round(float(np.median(lmt)), 4),
        "rule_circulant_cases": int(wide.size),
        "rule_circulant_ratio_max": round(float(wide.max()), 4) if wide.size else None,
        "all_sound": sound,
        "rule_within_1.10": tight,
    }
    print()
    print(f"{len(rows)} cases in {wall:.1f} s; all bounds >= exact: {sound}")
    for name, arr in (("rule (dense|circulant)", rule), ("rule, circulant cases", wide), ("circulant", circ),
                      ("circulant, inputs >= 8 px", big), ("LMT", lmt)):
        if arr.size:
            st = stats(arr)
            print(f"  {name:<26} bound/exact: median {st['median']:.4f}  p90 {st['p90']:.4f}  max {st['max']:.4f}")
    out = {
        "summary": summary,
        "command": "python bench/conv_tightness.py" + (" --quick" if args.quick else "")
        + (f" --cases {args.cases}" if args.cases else "") + (f" --seed {args.seed}" if args.seed else ""),
        "stats": {"rule": stats(rule), "circulant": stats(circ), "lmt": stats(lmt),
                  "circulant_inputs_ge_8px": stats(big) if big.size else None},
        "wall_s": wall,
        "rows": rows,
    }
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    tmp = results / "conv_tightness.json.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, results / "conv_tightness.json")
    return 0 if sound and tight else 1


if __name__ == "__main__":
    sys.exit(main())
