"""Per-class-pair whole-network bounds for the pairwise certificate (``--tight-pairs``).

The pairwise radius of a sample with target ``t`` is ``min_j (F_t - F_j - delta) / L_tj`` with
``L_tj`` any upper bound of the Lipschitz constant of ``F_t - F_j``. The cheap ``L_tj`` is
``||a_t - a_j|| L_h`` (the affine tail) or ``sqrt(2) L``. When the model is a chain of (affine,
[0, 1]-slope activation) layers (``lipgraph.chain``), each pair gets a verified LipSDP-neuron bound
(``lipgraph.norms.lipsdp``): first the closed-form ECLipsE-Fast candidate (one recursion shared by
all pairs), then a first-order refinement of the pair's multipliers. Every candidate is verified
in lipgraph itself, and a pair keeps the smallest verified value, never more than its cheap bound.

Only pairs that decide a radius are solved: the pair ``(t, j)`` is *binding* for a sample when it
attains the minimum above. The loop repeatedly takes the binding pair shared by most samples and
tightens it one stage (fast, then refined), until no binding pair can be tightened further or the
budget is spent; a pair that binds no sample cannot change any radius.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# "auto" refines at most this many pairs per refinement stage (the pairs deciding most samples first;
# the others keep their fast candidates): a cap on work, not on time, so the result is reproducible
AUTO_MAX_REFINED_PAIRS = 100
AUTO_STAGES = 1  # refinement stages in "auto" and "all" (SECONDS mode: all of lipsdp_refine.STAGES)
# "auto" refines only up to this many hidden units (a step costs O(hidden^3)); SECONDS mode always may
AUTO_REFINE_MAX_HIDDEN = 1024
_CACHED_MODELS = 8  # per-process memory of refined multipliers, by the chain's weights (see _CACHE)
_EPS64 = float(2.0**-53)
_MAX_LISTED_PAIRS = 200  # pairs listed in the JSON report (all of them up to 20 classes)

METHOD_CHEAP = "last-layer"  # ||a_t - a_j|| L_h, or sqrt(2) L when smaller
METHOD_FAST = "eclipse-fast"
METHOD_REFINED = "lipsdp-neuron"


def parse_mode(value: str | float | None) -> tuple[str, float | None]:
    """``auto`` / ``all`` / ``off`` / a number of seconds (> 0) -> (mode, budget); raises ValueError otherwise.

    ``all`` tightens every class pair whatever the data, so the bounds do not depend on which samples are
    certified (what `certify --shard` needs for its parts to merge into exactly one run's result)."""
    if value is None:
        return "auto", None
    if isinstance(value, int | float):
        secs = float(value)
    else:
        text = str(value).strip().lower()
        if text in ("auto", "all", "off"):
            return text, None
        try:
            secs = float(text)
        except ValueError:
            raise ValueError(f"--tight-pairs must be auto, all, off or a number of seconds, got '{value}'") from None
    if not (math.isfinite(secs) and secs > 0):
        raise ValueError(f"--tight-pairs seconds must be a finite number > 0, got {value}")
    return "seconds", secs


@dataclass
class PairTable:
    """Per-pair bounds ``L_tj`` in the form ``compute_radii`` takes as a pairwise candidate."""

    matrix: np.ndarray  # (K, K) bounds of the pair constants (diagonal unused)
    methods: np.ndarray  # (K, K) method names
    cheap: np.ndarray  # (K, K) the cheap bounds they replace
    meta: dict[str, Any] = field(default_factory=dict)
    h: str = "network"
    l_h: float = 1.0
    ops: list[str] = field(default_factory=list)

    def pair_norms(self, t: int) -> np.ndarray:
        return self.matrix[t]


def cheap_pair_bounds(k: int, lipschitz: float, tails: list[Any]) -> np.ndarray:
    """The bounds the certificate uses without this module: the best tail split or ``sqrt(2) L``."""
    sqrt2 = float(np.nextafter(math.sqrt(2.0), math.inf))
    out = np.full((k, k), float(np.nextafter(sqrt2 * lipschitz, math.inf)))
    for cand in tails:
        if cand.matrix.shape[0] != k:
            continue
        rows = np.stack([cand.pair_norms(t) for t in range(k)]) * (cand.l_h * (1.0 + 4 * _EPS64))
        out = np.minimum(out, np.nextafter(rows, math.inf))
    return out


def binding_pairs(
    f: np.ndarray, target: np.ndarray, correct: np.ndarray, delta: np.ndarray, bounds: np.ndarray
) -> dict[tuple[int, int], int]:
    """For each sample certified at a positive radius, the pair that attains its pairwise minimum."""
    n = f.shape[0]
    rows = np.arange(n)
    diff = f[rows, target][:, None] - f - delta[:, None]
    den = bounds[target]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(diff > 0, diff / den, 0.0)
    q[rows, target] = np.inf
    j = np.argmin(q, axis=1)
    ok = correct & (q[rows, j] > 0) & np.isfinite(q[rows, j])
    counts: dict[tuple[int, int], int] = {}
    for t, jj in zip(target[ok].tolist(), j[ok].tolist(), strict=True):
        key = (min(t, jj), max(t, jj))
        counts[key] = counts.get(key, 0) + 1
    return counts


def tighten_pairs(
    chain: Any,
    f: np.ndarray,
    target: np.ndarray,
    correct: np.ndarray,
    delta: np.ndarray,
    cheap: np.ndarray,
    mode: str,
    budget_s: float | None,
) -> PairTable:
    """Tighten the binding pairs of a chain within the mode's budget; see the module docstring.

    Runs the linear algebra on one BLAS thread: the optimiser's path follows the summation order, and
    one thread makes the bounds the same whatever the caller's thread setup (small matrices gain
    little from more threads anyway)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _tighten(chain, f, target, correct, delta, cheap, mode, budget_s)


def _chain_digest(weights: Any) -> str:
    h = hashlib.sha256()
    for arr in [*weights.hidden, *weights.hidden_err, weights.last, weights.last_err]:
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float64))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# chain digest -> {(i, j, stage schedule): refined (rho, T)}. A pair's refinement depends only on the weights, the
# pair and the stage (each stage starts from the previous one's result, the first from the fast candidate),
# so a repeated certify of the same model in one process reuses it and gets exactly the same bounds.
_Memory = dict[tuple[int, int, tuple], tuple[float, list[np.ndarray]]]
_CACHE: dict[str, _Memory] = {}


def _cached(digest: str) -> _Memory:
    if digest not in _CACHE:
        while len(_CACHE) >= _CACHED_MODELS:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[digest] = {}
    return _CACHE[digest]


def _tighten(
    chain: Any,
    f: np.ndarray,
    target: np.ndarray,
    correct: np.ndarray,
    delta: np.ndarray,
    cheap: np.ndarray,
    mode: str,
    budget_s: float | None,
) -> PairTable:
    from lipgraph.norms import lipsdp, lipsdp_refine

    t0 = time.perf_counter()
    deadline = t0 + budget_s if mode == "seconds" and budget_s is not None else math.inf
    k = cheap.shape[0]
    bounds = cheap.copy()
    methods = np.full((k, k), METHOD_CHEAP, dtype=object)
    stage = np.zeros((k, k), dtype=np.int64)  # 0 cheap, 1 fast tried, 1 + s: refinement stage s tried
    stages = lipsdp_refine.STAGES if mode == "seconds" else lipsdp_refine.STAGES[:AUTO_STAGES]
    if mode in ("auto", "all") and sum(chain.weights.sizes) > AUTO_REFINE_MAX_HIDDEN:
        stages = ()
    last_stage = 1 + len(stages)
    refined_per_stage = [0] * len(stages)
    prep = lipsdp.prepare(chain.weights)
    rec = lipsdp.fast_recursion(prep)
    memory = _cached(_chain_digest(chain.weights))
    candidates: dict[tuple[int, int], tuple[float, list[np.ndarray]]] = {}
    rejected = 0
    out_of_time = False
    capped = False
    every_pair = {(i, j): 1 for i in range(k) for j in range(i + 1, k)}
    while True:
        counts = every_pair if mode == "all" else binding_pairs(f, target, correct, delta, bounds)
        # lower stages first, then the pair deciding most samples
        todo = sorted(
            ((c, p) for p, c in counts.items() if stage[p] < last_stage),
            key=lambda cp: (int(stage[cp[1]]), -cp[0], cp[1]),
        )
        if not todo:
            break
        if time.perf_counter() > deadline:
            out_of_time = True
            break
        # the cheap stage for every binding pair first, then the most-shared pair's refinement
        fast_todo = [p for _, p in todo if stage[p] == 0]
        batch = fast_todo if fast_todo else [todo[0][1]]
        for i, j in batch:
            if stage[i, j] == 0:
                rho, tt = lipsdp.fast_candidate(prep, rec, i, j)
                method = METHOD_FAST
            elif (i, j) not in candidates or (
                mode == "auto" and refined_per_stage[int(stage[i, j]) - 1] >= AUTO_MAX_REFINED_PAIRS
            ):  # no verified start to refine from, or auto's work cap reached: the pair keeps its bound
                capped = capped or (i, j) in candidates
                stage[i, j] = stage[j, i] = last_stage
                continue
            else:
                s = int(stage[i, j]) - 1
                refined_per_stage[s] += 1
                key = (i, j, stages[: s + 1])  # the schedule so far: it fixes the start too
                if key not in memory:
                    rho0, t_start = candidates[(i, j)]
                    memory[key] = lipsdp_refine.refine_pair(prep, i, j, rho0, t_start, stages[s])
                rho, tt = memory[key]
                method = METHOD_REFINED
            stage[i, j] = stage[j, i] = stage[i, j] + 1
            res = lipsdp.verify_pair(prep, i, j, rho, tt)
            if not res.accepted:
                # the matrix inequality failed beyond rounding: the pair keeps its previous bound
                rejected += 1
                continue
            candidates[(i, j)] = (rho, tt)
            if res.bound < bounds[i, j]:
                bounds[i, j] = bounds[j, i] = res.bound
                methods[i, j] = methods[j, i] = method
    solved = [(i, j) for i in range(k) for j in range(i + 1, k) if stage[i, j] > 0]
    counts_by_method: dict[str, int] = {}
    for i in range(k):
        for j in range(i + 1, k):
            counts_by_method[methods[i, j]] = counts_by_method.get(methods[i, j], 0) + 1
    listed = solved if k > 20 else [(i, j) for i in range(k) for j in range(i + 1, k)]
    meta: dict[str, Any] = {
        "used": True,
        "mode": mode if mode != "seconds" else f"{budget_s:g}s",
        "chain": chain.describe(),
        "pairs_total": k * (k - 1) // 2,
        "pairs_solved": len(solved),
        "pairs_by_method": counts_by_method,
        "rejected_candidates": rejected,
        "budget_exhausted": out_of_time,
        "work_capped": capped,
        "time_s": round(time.perf_counter() - t0, 4),
        "pairs": [
            {
                "classes": [i, j],
                "bound": float(bounds[i, j]),
                "cheap_bound": float(cheap[i, j]),
                "method": str(methods[i, j]),
            }
            for i, j in listed[:_MAX_LISTED_PAIRS]
        ],
    }
    return PairTable(bounds, methods, cheap, meta)


def pair_candidates(
    graph: Any,
    logits_name: str,
    logits: np.ndarray,
    labels: np.ndarray | None,
    lipschitz: float,
    tails: list[Any],
    tight_pairs: str | float | None,
    unfused_graph: Callable[[], Any] | None = None,
    margin_rel: float = 1e-5,
) -> tuple[list[PairTable], dict[str, Any]]:
    """The certificate's extra pairwise candidate (empty when off or not applicable) and its report.

    ``unfused_graph`` builds the same model's graph without the passes that only tighten (they fuse an
    MLP's hidden layers into sandwich nodes, which hide the chain); it is called only when ``graph``
    holds fused nodes and the input is small enough for a chain. ``margin_rel``: the margin floor (times
    max|logit|) used only to choose which pairs decide a sample; the certificate applies its own allowance.
    """
    from lipgraph.chain import MAX_INPUT_DIM, NotAChain, extract_chain

    mode, budget = parse_mode(tight_pairs)
    if mode == "off":
        return [], {"used": False, "mode": "off"}
    f = np.asarray(logits, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] < 2:
        return [], {"used": False, "mode": mode, "reason": "a single logit has no class pairs"}
    try:
        chain_graph = graph
        if unfused_graph is not None and _has_fused_nodes(graph) and _input_size(graph) <= MAX_INPUT_DIM:
            chain_graph = unfused_graph()
        chain = extract_chain(chain_graph, logits_name)
    except NotAChain as exc:
        return [], {
            "used": False,
            "mode": mode,
            "reason": f"not a chain of affine layers and [0, 1]-slope activations: {exc}",
        }
    k = f.shape[1]
    if chain.weights.last.shape[0] != k:
        return [], {"used": False, "mode": mode, "reason": "the chain's output does not match the logits"}
    pred = np.argmax(f, axis=1)
    target = pred if labels is None else np.asarray(labels, dtype=np.int64)
    correct = pred == target
    delta = margin_rel * np.max(np.abs(f), axis=1)
    cheap = cheap_pair_bounds(k, lipschitz, tails)
    table = tighten_pairs(chain, f, target, correct, delta, cheap, mode, budget)
    return [table], table.meta


def _has_fused_nodes(graph: Any) -> bool:
    from lipgraph.domains import LIPGRAPH_DOMAIN

    return any(n.domain == LIPGRAPH_DOMAIN for n in graph.nodes)


def _input_size(graph: Any) -> float:
    shape = graph.shape_of(graph.input_name) or ()
    if not shape or any(d is None for d in shape):
        return math.inf
    return float(np.prod(shape[1:], dtype=np.float64))
