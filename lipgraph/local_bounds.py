"""Per-sample local bounds in the certificate (``--local-bounds auto|all|off``).

A global or per-pair Lipschitz constant cannot see that most ReLUs keep their state inside a small ball
around a sample. For chains of (affine, ReLU / LeakyReLU) layers, certify therefore also checks the radii of
its eps grid per sample with linear bound propagation over the L2 ball (:mod:`lipgraph.norms.crown_l2`,
CROWN: Zhang et al., NeurIPS 2018). For a correctly classified sample with target ``t`` whose radius is
below some grid eps, the grid's eps values above its radius are tried in ascending order until one fails;
the sample's radius becomes ``max(radius, largest verified eps)``, then a few bisection steps between the grid
point below the first eps that failed and that eps raise it to a verified radius between grid points
(:mod:`lipgraph.local_bisect`). The bracket and every radius tried depend on the grid only, never on the radius
the sample came with, so a larger incoming radius (per-pair bounds, say) can never end lower.

A class ``j`` is verified at ``r`` when the lower bound ``lb_j`` of the real network's ``F_t - F_j`` over the
ball exceeds the deployed model's float allowance: ONNX Runtime's float32 logits at any ``x'`` of the ball
are within ``e + d r`` (L2) of the real network's (``lipgraph.floaterr``: the graph walk's ``e(||x||), d``
and the per-sample chain bound; the smaller is used), so a difference of two logits moves by at most
``sqrt(2) (e + d r)``; the ``MARGIN_REL * max|F(x)|`` floor of the certificate is added on top. ONNX
Runtime's prediction at x must be ``t``. Derivation: docs/local-bounds.md.

Everything is per sample (nothing depends on which other samples are certified), so the parts of
``certify --shard`` merge into exactly one run's result. ``auto`` runs it on chains whose cost per sample and
radius is under :data:`AUTO_MAX_WORK` multiply-adds (a cap on work, not on time: reproducible); conv layers are
kept as convolutions (:mod:`lipgraph.norms.crown_conv`) where that is cheaper, under
:data:`AUTO_MAX_STRUCTURED_WORK`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lipgraph import local_bisect
from lipgraph.local_attack import refuted
from lipgraph.local_chain import NotLocal, read_chain
from lipgraph.norms.crown_conv import CrownConv
from lipgraph.norms.crown_l2 import CrownL2

__all__ = ["NotLocal", "read_chain", "local_candidates", "local_radii", "allowance", "parse_local_mode"]

AUTO_MAX_WORK = 5e7  # multiply-adds per sample and radius that "auto" accepts (MNIST 784-128-128-10: 5.4e6)
# The structured conv form (conv layers as convolutions, lipgraph.local_chain.STRUCTURED_COST) runs ~3x fewer
# multiply-adds per ms than the dense form. Its cap admits the MNIST CNN
# of Wong & Kolter only under ``all``: at ~0.15 s per sample and eps, a 10,000-image test set would take an hour by
# default. auto's cap (~15 ms per sample and eps) keeps the default certify of a CNN within minutes; still a cap on
# counted work (per sample, so --shard parts merge exactly), reproducible.
AUTO_MAX_STRUCTURED_WORK = 3e7
CHUNK = 64  # samples per batch of the propagation (its arrays are samples x 2 units x units)
SPAN = 4096  # rows of the data read at once for one batch (a stream view is read by contiguous slices)
METHOD = "crown-l2"
_SQRT2_UP = float(np.nextafter(math.sqrt(2.0), math.inf))
_EPS64 = 2.0**-53
_FLOAT_MAX = float(np.finfo(np.float64).max)


def parse_local_mode(value: str | None) -> str:
    text = "auto" if value is None else str(value).strip().lower()
    if text not in ("auto", "all", "off"):
        raise ValueError(f"--local-bounds must be auto, all or off, got '{value}'")
    return text


@dataclass
class LocalRadii:
    radius: np.ndarray  # the improved radii (never below the ones given)
    from_local: np.ndarray  # per sample: True where the local bound gave the radius
    meta: dict[str, Any]


def allowance(
    float_errors: Sequence[tuple[np.ndarray, float]], logits: np.ndarray, r: float | np.ndarray, margin_rel: float
) -> np.ndarray:
    """Per sample: what a logit difference of ONNX Runtime's may lose against the real network within ``r``,
    plus the certificate's floor (module docstring)."""
    best = None
    for e, d in float_errors:
        v = np.asarray(e, dtype=np.float64) + float(d) * r
        best = v if best is None else np.minimum(best, v)
    f = np.asarray(logits, dtype=np.float64)
    floor = margin_rel * np.max(np.abs(f), axis=1)
    base = np.zeros(len(f)) if best is None else best * _SQRT2_UP
    return np.nextafter((base + floor) * (1.0 + 8 * _EPS64), np.inf)


def _chunks(todo: np.ndarray) -> list[np.ndarray]:
    """``todo`` (ascending) in batches of at most CHUNK samples spanning at most SPAN rows of the data."""
    out: list[np.ndarray] = []
    start = 0
    while start < len(todo):
        stop = min(start + CHUNK, len(todo))
        stop = start + int(np.searchsorted(todo[start:stop], todo[start] + SPAN))  # rows todo[start] + SPAN and on
        out.append(todo[start:stop])
        start = stop
    return out


def local_radii(
    crown: CrownL2 | CrownConv,
    x: Any,
    logits: np.ndarray,
    target: np.ndarray,
    correct: np.ndarray,
    radius: np.ndarray,
    eps_list: Sequence[float],
    float_errors: Sequence[tuple[np.ndarray, float]],
    margin_rel: float,
    bisect_steps: int | None = None,
) -> LocalRadii:
    """Try the grid's eps values per sample, then bisect below the first failure (module docstring). ``x``: the
    inputs exactly as ONNX Runtime ran them (an array or a stream view read by contiguous slices).
    ``bisect_steps``: default :data:`lipgraph.local_bisect.BISECT_STEPS` (0: grid values only)."""
    t0 = time.perf_counter()
    bisect_steps = local_bisect.BISECT_STEPS if bisect_steps is None else max(int(bisect_steps), 0)
    grid = sorted(float(e) for e in eps_list if e > 0)
    out = np.array(radius, dtype=np.float64, copy=True)
    from_local = np.zeros(len(out), dtype=bool)
    checked = {e: 0 for e in grid}
    improved = {e: 0 for e in grid}
    refuted_count = {e: 0 for e in grid}
    bis = {"evaluations": 0, "samples_raised": 0}
    # finite even above 1e308 / CAP_FACTOR: the cap is reported in JSON, where inf is no number
    cap = min(local_bisect.CAP_FACTOR * grid[-1], _FLOAT_MAX) if grid else 0.0
    pred_ok = np.argmax(logits, axis=1) == target if logits.shape[1] > 1 else np.zeros(len(out), bool)
    # samples whose radius is below the cap: the bisection may reach it even where no grid eps is left to try
    todo = np.flatnonzero(correct & pred_ok & (out < (cap if bisect_steps > 0 else grid[-1] if grid else -1.0)))
    for idx in _chunks(todo):
        xs = np.asarray(x[int(idx[0]) : int(idx[-1]) + 1])[idx - idx[0]]
        first = _first_layer_per_sample(crown, xs)
        alive = np.ones(len(idx), dtype=bool)
        failed_at = np.full(len(idx), cap)  # the first eps that failed (the cap where none did)
        slack_lo = np.full(len(idx), np.nan)  # min lb - allowance where the bound verified lo (to aim the steps)
        for e in grid:
            sel = np.flatnonzero(alive & (out[idx] < e))
            if not len(sel):
                continue
            allow = allowance([(np.asarray(a)[idx[sel]], d) for a, d in float_errors], logits[idx[sel]], e, margin_rel)
            # a point of the ball where the margin is already below the allowance: the bound (below the margin
            # everywhere in the ball) cannot pass there, so skip its cost; skipping never certifies anything
            hopeless = refuted(crown, xs[sel], target[idx[sel]], e, allow)
            refuted_count[e] += int(hopeless.sum())
            ok = np.zeros(len(sel), dtype=bool)
            try_ = np.flatnonzero(~hopeless)
            if len(try_):
                s2 = sel[try_]
                lb = crown.margin_lower_bounds(xs[s2], target[idx[s2]], e, (first[0][s2], first[1][s2]))
                ok[try_] = np.min(lb, axis=1) > allow[try_]
                sl = np.full(len(sel), np.nan)
                sl[try_] = np.min(lb, axis=1) - allow[try_]
                slack_lo[sel[ok]] = sl[ok]
            checked[e] += len(sel)
            improved[e] += int(ok.sum())
            out[idx[sel[ok]]] = e
            from_local[idx[sel[ok]]] = True
            alive[sel[~ok]] = False
            failed_at[sel[~ok]] = e
        if bisect_steps > 0 and grid:
            verify = _verifier(crown, xs, first, target[idx], logits[idx], idx, float_errors, margin_rel)
            before = out[idx].copy()
            # the bracket starts at the grid point below the eps that failed (0 below the first), not at the
            # incoming radius: then the radii tried, and the result, do not depend on it (monotone in it)
            start = _grid_below(grid, failed_at)
            rows = np.flatnonzero((failed_at > before) & np.isnan(slack_lo) & (start > 0))
            if rows.size:  # the grid skipped that point (the incoming radius reached it): its slack aims the steps
                ok, slack = verify(rows, start[rows])
                slack_lo[rows[ok]] = slack[ok]
                bis["evaluations"] += int(rows.size)
                # an eps the bound cannot verify leaves the bracket without a verified end: no steps there
                failed_at[rows[~ok]] = start[rows[~ok]]
            go = failed_at > before
            found, n_checked = local_bisect.bisect_radii(
                start[go],
                failed_at[go],
                bisect_steps,
                verify_rows(verify, np.flatnonzero(go)),
                slack_lo[go],
                before[go],
            )
            out[idx[go]] = np.maximum(before[go], found)
            bis["evaluations"] += n_checked
            raised = out[idx] > before
            bis["samples_raised"] += int(raised.sum())
            from_local[idx[raised]] = True
    return LocalRadii(
        out,
        from_local,
        {
            "used": True,
            "method": f"{METHOD}: linear bound propagation over the L2 ball (CROWN), float64 with rounding charged",
            "hidden": crown.sizes[:-1],
            "form": "structured" if isinstance(crown, CrownConv) else "dense",
            "work_per_sample_and_eps": crown.work_per_sample(),
            "samples_checked": {str(e): checked[e] for e in grid},
            "samples_improved": {str(e): improved[e] for e in grid},
            "samples_refuted_by_attack": {str(e): refuted_count[e] for e in grid},
            "samples_from_local": int(from_local.sum()),
            # radii checked between grid points (each costs what one sample and eps does); samples whose radius rose
            "bisection": {
                "steps": bisect_steps,
                "cap": cap,
                **bis,
                "max_evaluations_per_sample": len(grid) + bisect_steps,
            },
            "time_s": round(time.perf_counter() - t0, 4),
        },
    )


def _first_layer_per_sample(crown: CrownL2 | CrownConv, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``crown.first_layer`` per sample: BLAS rounds a few rows otherwise than many, and no verdict at a near tie may
    depend on which samples share the batch (``--shard`` parts, whose batches differ, merge exactly)."""
    parts = [crown.first_layer(xs[i : i + 1]) for i in range(len(xs))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _grid_below(grid: Sequence[float], failed_at: np.ndarray) -> np.ndarray:
    """Per sample, the largest grid eps below ``failed_at`` (the eps that failed, or the cap), 0 where none is."""
    g = np.asarray(grid, dtype=np.float64)
    k = np.searchsorted(g, failed_at, side="left")
    return np.where(k > 0, g[np.maximum(k - 1, 0)], 0.0)


def verify_rows(verify: Any, rows_of: np.ndarray) -> Any:
    """``verify`` seen through a selection: row ``i`` of the selection is row ``rows_of[i]`` of the batch."""
    return lambda rows, r: verify(rows_of[rows], r)


def _verifier(
    crown: CrownL2 | CrownConv,
    xs: np.ndarray,
    first: tuple[np.ndarray, np.ndarray],
    target: np.ndarray,
    logits: np.ndarray,
    idx: np.ndarray,
    float_errors: Sequence[tuple[np.ndarray, float]],
    margin_rel: float,
) -> Any:
    """``verify(rows, r)`` for :func:`lipgraph.local_bisect.bisect_radii` over one batch: the grid's test at a
    radius per sample, with the bound's slack. The bound runs one sample at a time, so that no result depends on the
    batch, and on every sample: no attack skips it here, because the slack it returns aims the next step (the path
    must not depend on whether the attack found a point)."""

    def verify(rows: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        errs = [(np.asarray(a)[idx[rows]], d) for a, d in float_errors]
        allow = allowance(errs, logits[rows], r, margin_rel)
        ok = np.zeros(len(rows), dtype=bool)
        slack = np.full(len(rows), np.nan)
        for k, i in enumerate(rows):
            one = (first[0][i : i + 1], first[1][i : i + 1])
            lb = crown.margin_lower_bounds(xs[i : i + 1], target[i : i + 1], float(r[k]), one)
            ok[k] = np.min(lb) > allow[k]
            slack[k] = np.min(lb) - allow[k]
        return ok, slack

    return verify


def local_candidates(
    mode: str,
    graph_fn: Any,
    logits_name: str,
    x: Any,
    logits: np.ndarray,
    target: np.ndarray,
    correct: np.ndarray,
    radius: np.ndarray,
    eps_list: Sequence[float],
    float_errors: Sequence[tuple[np.ndarray, float]],
    margin_rel: float,
    bisect_steps: int | None = None,
) -> LocalRadii:
    """certify's entry point: ``graph_fn()`` gives the unfused graph; off or not applicable leaves the radii."""
    unchanged = LocalRadii(np.asarray(radius), np.zeros(len(radius), dtype=bool), {})
    if mode == "off":
        unchanged.meta = {"used": False, "mode": "off"}
        return unchanged
    if logits.ndim != 2 or logits.shape[1] < 2:
        unchanged.meta = {"used": False, "mode": mode, "reason": "a single logit: no class pairs"}
        return unchanged
    try:
        if mode == "all":  # no work cap: the cheaper form wherever the chain can be read
            crown = read_chain(graph_fn(), logits_name)
        else:
            crown = read_chain(graph_fn(), logits_name, AUTO_MAX_WORK, max_structured_work=AUTO_MAX_STRUCTURED_WORK)
    except NotLocal as exc:
        why = str(exc)
        over_cap = "multiply-adds" in why
        unchanged.meta = {
            "used": False,
            "mode": mode,
            "reason": why if over_cap else f"not a chain of affine layers and ReLU / LeakyReLU: {why}",
            "over_work_cap": over_cap,
        }
        return unchanged
    if crown.sizes[-1] != logits.shape[1]:
        unchanged.meta = {"used": False, "mode": mode, "reason": "the chain's output does not match the logits"}
        return unchanged
    res = local_radii(crown, x, logits, target, correct, radius, eps_list, float_errors, margin_rel, bisect_steps)
    res.meta["mode"] = mode
    return res
