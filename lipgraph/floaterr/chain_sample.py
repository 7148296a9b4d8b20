"""A per-sample float error bound for chains of (affine op, elementwise activation) layers.

The graph walk (``lipgraph.floaterr.walk``) bounds the float error through norms, for every input of a
given norm at once. For a chain (Gemm / MatMul / Conv with constant weights, Add / Sub of constants,
ReLU / LeakyReLU, reshapes) this module evaluates the a-priori dot-product bound (Higham 2002, ch. 3)
**at the sample**, with ``h_k`` the real value entering affine layer ``k`` and ``e_k`` the error so far:

    e_{k+1} <= ||W_k||_2 e_k + gamma_n || |W_k| |h_k| + |b_k| || + gamma_n || |W_k| ||_2 e_k.

``h_k`` comes from a float64 pass whose own error ``g_k`` follows the same recursion at ``u = 2^-53``; a
sample-independent slope ``d`` gives ``error(x') <= e(x) + d ||x' - x||``. Rounding counts are the walk's
(``lipgraph.floaterr.local``). A second bound ``e_x``, valid at x alone, counts only the products whose
float operand may be nonzero at x. Derivation: docs/floating-point.md ("A per-sample bound for chains").
Reading the chain's ops from the graph: ``lipgraph.floaterr.chain_ops``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lipgraph.floaterr.chain_ops import NotAChainForFloat, read_chain_ops
from lipgraph.floaterr.state import (
    NoFloatBound,
    check_subnormals,
    daz_norm,
    dot_gamma,
    gamma,
    has_subnormal,
    underflow_norm,
)
from lipgraph.graph import Graph

U64 = 2.0**-53
_SLACK = 1.0 + 1e-9  # the O(layers) float64 roundings of the recursion itself (nonnegative sums)
# float64 multiply-adds the bound may spend on a whole data set (two passes of each affine op, numpy on the
# bound's thread beside ONNX Runtime): an MNIST MLP on 10,000 images needs ~2.4e9; large conv nets keep the walk
MAX_WORK = 2e10


@dataclass
class ChainSampleBound:
    """Per-sample bounds ``e`` on ``||logits_float - logits_real||_2`` and the slope ``d`` in the ball."""

    e: np.ndarray  # valid at x and, with d, within the ball: e(x') <= e(x) + d ||x' - x||
    d: float
    layers: int
    e_x: np.ndarray | None = None  # valid at x only (counts only the nonzero terms of x's sums); <= e
    g: np.ndarray | None = None  # bound on ||logits64 - real logits|| (the float64 pass's own error)
    logits64: np.ndarray | None = None  # the float64 pass's logits (kept only when asked, for tests)

    def describe(self) -> dict[str, Any]:
        return {"method": "per-sample running error bound along the chain", "d": self.d, "chain_ops": self.layers}


class ChainFloatModel:
    """The chain's ops, read once from the unfused graph; :meth:`bound` evaluates them per batch."""

    def __init__(self, graph: Graph, logits: str, u: float, u_dot: float, subnormals: str = "gradual"):
        self.u, self.u_dot = u, u_dot
        # "flush": every op may read subnormal operands as zero (the walk's DAZ term, lipgraph.floaterr.walk)
        self.flush = check_subnormals(subnormals) == "flush"
        self.ops = read_chain_ops(graph, logits)
        if self.flush:
            for op in self.ops:
                for c in op.consts:
                    if has_subnormal(c, 2.0**-24):
                        raise NotAChainForFloat(f"'{op.name}' has a subnormal constant (read as zero on a GPU)")
        self.in_shape = tuple(int(d) for d in graph.shape_of(graph.input_name)[1:])  # type: ignore[index, arg-type]

    def bound(self, x: np.ndarray, keep_logits: bool = False) -> ChainSampleBound:
        """``x``: the float32 inputs exactly as fed to ONNX Runtime (batch first).

        One float64 pass carries two float32 error bounds: ``e`` counts every term of each sum (valid in the
        ball, with the slope ``d``), ``e_x`` only the terms that can be nonzero at x (valid at x alone: a point
        near x may have nonzeros where x has none)."""
        m = len(x)
        h = np.asarray(x, dtype=np.float64).reshape(m, *self.in_shape)
        g = np.zeros(m)  # ||h64 - h_real||
        e, e_x = np.zeros(m), np.zeros(m)  # ||h_float32 - h_real||: dense count, count at x
        lip, slope = 1.0, 0.0  # Lipschitz bound of the real prefix; d of the error so far
        # terms behind the last affine result: elementwise <= tv + w with ||w|| <= te + ts r (see docs)
        tv, te, te_x, ts = np.abs(h), g + e, g + e_x, lip + slope
        fan, fan_x = 0, np.zeros(m, dtype=np.int64)
        nz = _count(h != 0)  # entries of the float tensor that may be nonzero at x (x's own zeros are exact)
        for op in self.ops:
            # DAZ: the op may read its input's subnormal entries as zero, an input error below tau sqrt(n)
            daz = daz_norm(h[0].size, self.u) if self.flush and op.kind != "shape" else 0.0
            e, e_x = e + daz, e_x + daz
            if op.kind == "dot":
                assert op.lin is not None and op.abs_lin is not None
                n_x = op.n - op.inner + np.minimum(op.inner, nz)
                gam, gam_x = dot_gamma(op.n, self.u, self.u_dot), _dot_gam(n_x, self.u, self.u_dot)
                tv = _up(op.abs_lin(np.abs(h)), op.n)
                if op.bias is not None:
                    tv = _up(tv + np.abs(op.bias), 1)
                tn = _norm_up(tv)
                te, te_x, ts = op.abs_norm * (g + e), op.abs_norm * (g + e_x), op.abs_norm * (lip + slope)
                h = op.lin(h) + (op.bias if op.bias is not None else 0.0)
                # the absolute part of the roundings: results below the normal range (gamma alone assumes none)
                size = int(np.prod(op.out_shape))
                tiny, tiny64 = underflow_norm(op.n, size, self.u), underflow_norm(op.n + 1, size, U64)
                e = op.factor * e + gam * (tn + te) + tiny
                e_x = op.factor * e_x + gam_x * (tn + te_x) + tiny
                g = op.factor * g + gamma(op.n + 1, U64) * tn + tiny64
                slope = op.factor * slope + gam * ts
                lip *= op.factor
                fan, fan_x, nz = op.n, n_x, np.full(m, h[0].size)
            elif op.kind == "add":
                assert op.bias is not None
                gam, gam_x = gamma(fan + 3, self.u), _gam(fan_x + 3, self.u)
                tv = _up(tv + np.abs(op.bias), 1)
                tn = _norm_up(tv)
                size = int(np.prod(op.out_shape))
                tiny = underflow_norm(fan + 3, size, self.u)
                e, e_x = e + gam * (tn + te) + tiny, e_x + gam_x * (tn + te_x) + tiny
                g = g + gamma(2, U64) * _norm_up(_up(np.abs(h) + np.abs(op.bias), 1)) + underflow_norm(2, size, U64)
                slope = slope + gam * ts
                h = h + op.bias
                fan, fan_x, nz = fan + 3, fan_x + 3, np.full(m, h[0].size)
            elif op.kind in ("relu", "leaky"):
                if op.kind == "relu":  # exact in any float format, 1-Lipschitz entrywise
                    # the float input is h_real + err with |err_j| <= e_x, h_real_j <= h64_j + g: below 0 -> exact 0
                    nz = _count(h + (g + e_x).reshape(-1, *[1] * (h.ndim - 1)) >= 0)
                    h = np.maximum(h, 0.0)
                else:  # |fl(f(y)) - f(y)| <= u (|f(y)| + |y| + 1) per entry, as the walk assumes (1 unit)
                    a = np.abs(h)
                    base = _norm_up(_up(2.0 * a + 1.0, 1))
                    e = e + self.u * (1 + 1e-9) * (base + 2.0 * (g + e))
                    e_x = e_x + self.u * (1 + 1e-9) * (base + 2.0 * (g + e_x))
                    slope = slope + self.u * (1 + 1e-9) * 2.0 * (lip + slope)
                    g = g + U64 * (1 + 1e-9) * _norm_up(a) + underflow_norm(1, int(np.prod(op.out_shape)), U64)
                    h = np.where(h >= 0, h, op.alpha * h)
                    nz = np.full(m, h[0].size)
                tv, te, te_x, ts = np.abs(h), g + e, g + e_x, lip + slope
                fan, fan_x = 0, np.zeros(m, dtype=np.int64)
            else:  # a reshape: no arithmetic
                h = h.reshape(m, *op.out_shape)
                tv, te, te_x, ts = np.abs(h), g + e, g + e_x, lip + slope
                fan, fan_x = 0, np.zeros(m, dtype=np.int64)
        e = np.nextafter(e * _SLACK, np.inf)
        e_x = np.minimum(np.nextafter(e_x * _SLACK, np.inf), e)
        d = float(np.nextafter(slope * _SLACK, np.inf))
        return ChainSampleBound(e, d, len(self.ops), e_x, g * _SLACK, h.reshape(m, -1) if keep_logits else None)


def _count(mask: np.ndarray) -> np.ndarray:
    return np.count_nonzero(mask.reshape(len(mask), -1), axis=1)


def _gam(n: np.ndarray, u: float) -> np.ndarray:
    vals = {int(k): gamma(int(k), u) for k in np.unique(n)}
    return np.array([vals[int(k)] for k in n])


def _dot_gam(n: np.ndarray, u: float, u_dot: float) -> np.ndarray:
    """``dot_gamma`` (Higham's gamma with operand rounding) per sample, from the scalar definition."""
    vals = {int(k): dot_gamma(int(k), u, u_dot) for k in np.unique(n)}
    return np.array([vals[int(k)] for k in n])


def _up(v: np.ndarray, n: int) -> np.ndarray:
    """Cover the float64 rounding of a sum of ``n + 1`` nonnegative terms computed entrywise."""
    return v * (1.0 + 2.0 * gamma(n + 2, U64))


def _norm_up(v: np.ndarray) -> np.ndarray:
    """Per-sample L2 norms of nonnegative rows, rounded up (a sum of squares and a square root)."""
    flat = v.reshape(len(v), -1)
    k = flat.shape[1]
    return np.sqrt(np.einsum("ij,ij->i", flat, flat)) * (1.0 + gamma(k + 4, U64))


@dataclass
class ChainFloat:
    """The per-sample chain bound for certify, or the reason there is none (the walk's bound then stands)."""

    bound: ChainSampleBound | None
    reason: str | None = None

    def candidates(self) -> list[tuple[Any, ...]]:
        """``(e, d, e_x)`` for :func:`lipgraph.certify.compute_radii`."""
        return [] if self.bound is None else [(self.bound.e, self.bound.d, self.bound.e_x)]

    def describe(self, choice: np.ndarray | None) -> dict[str, Any]:
        """JSON for ``meta.float_error.per_sample_chain``; ``choice`` is 1 where this bound was used."""
        if self.bound is None:
            return {"used": False, "reason": self.reason}
        used = int(np.sum(choice == 1)) if choice is not None else 0
        return {
            "used": used > 0,
            **self.bound.describe(),
            "max_over_samples": float(np.max(self.bound.e)) if len(self.bound.e) else 0.0,
            "max_over_samples_at_x": float(np.max(self.bound.e_x))
            if self.bound.e_x is not None and len(self.bound.e_x)
            else None,
            "samples_used": used,
        }


def chain_float(
    proto: onnx.ModelProto,
    input_name: str | None,
    sample_shape: tuple[int, ...],
    logits: str,
    x: Any,
    u: float,
    u_dot: float,
    graph: Graph | None = None,
    subnormals: str = "gradual",
) -> ChainFloat:
    """:func:`chain_sample_bound` at float32's unit roundoff or above, wrapped for certify."""
    bound, why = chain_sample_bound(
        proto, input_name, sample_shape, logits, x, max(u, 2.0**-24), u_dot, graph=graph, subnormals=subnormals
    )
    return ChainFloat(bound, why)


def chain_sample_bound(
    proto: onnx.ModelProto,
    input_name: str | None,
    sample_shape: tuple[int, ...],
    logits: str,
    x: Any,
    u: float,
    u_dot: float,
    chunk: int = 2048,
    graph: Graph | None = None,
    subnormals: str = "gradual",
) -> tuple[ChainSampleBound | None, str | None]:
    """The per-sample bound over ``x`` (read in chunks: a stream view is never loaded whole), or
    ``(None, reason)`` when the model is not a chain handled here. ``graph``: the model's
    :func:`lipgraph.chain.unfused_graph` when the caller has built it already."""
    from lipgraph.chain import unfused_graph

    try:
        if graph is None:
            graph = unfused_graph(proto, input_name, sample_shape)
        model = ChainFloatModel(graph, logits, u, u_dot, subnormals)
    except (NotAChainForFloat, NoFloatBound) as exc:
        return None, str(exc)
    n = len(x)
    work = 2.0 * n * sum(float(np.prod(op.out_shape)) * op.inner for op in model.ops if op.kind == "dot")
    if work > MAX_WORK:
        return None, f"the per-sample bound would take {work:.2g} multiply-adds (limit {MAX_WORK:.2g})"
    e, e_x = np.empty(n), np.empty(n)
    d, layers = 0.0, len(model.ops)
    for start in range(0, n, chunk):
        part = model.bound(np.asarray(x[start : start + chunk]))
        assert part.e_x is not None
        e[start : start + len(part.e)] = part.e
        e_x[start : start + len(part.e)] = part.e_x
        d = part.d  # the same for every chunk (it does not depend on the samples)
    if not (np.all(np.isfinite(e)) and math.isfinite(d)):
        return None, "the per-sample bound is not finite"
    return ChainSampleBound(e, d, layers, e_x), None
