"""Exact window counting for ONNX pooling, and the norms built on it (docs/operators.md "Pooling").

A pooling op acts on each spatial axis through a family of windows: window ``o`` along an axis
covers the input positions ``o * s - pad_begin + j * d`` for ``j in range(k)`` (positions outside
``[0, n)`` are padding). The window grid of an N-D pool is the product of the per-axis families,
so every count used here is separable:

* the number of windows that contain one input element is the product of the per-axis counts, and
  the max over elements of a product of independent factors is the product of the per-axis maxima;
* AveragePool's divisor (real elements only for ``count_include_pad = 0``; elements inside the
  padded range for ``= 1``) is a product of per-axis counts, so the operator is the Kronecker product
  of per-axis averaging matrices and its norm is the product of their norms.

Output sizes follow the ONNX operator documents (and onnxruntime): floor or ceil of
``(n + pads - span) / s + 1`` with ``span = (k - 1) d + 1``; in ceil mode a last window that would
start inside the right padding is dropped; ``auto_pad`` SAME gives ``ceil(n / s)`` windows with
``pad_total = (out - 1) s + span - n`` split with the extra element at the end (SAME_UPPER) or the
beginning (SAME_LOWER); VALID gives ``ceil((n - span + 1) / s)``. A window with no real element never
contributes, so whether such windows exist (the "windows starting in the padding" rule) does not
change any bound here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lipgraph.norms import EPS64, NormBound
from lipgraph.norms.dense import spectral_norm


@dataclass(frozen=True)
class AxisPool:
    """The pooling geometry of one spatial axis (attributes of the ONNX node)."""

    kernel: int
    stride: int = 1
    dilation: int = 1
    pad_begin: int = 0
    pad_end: int = 0
    auto_pad: str = "NOTSET"
    ceil_mode: bool = False

    @property
    def span(self) -> int:
        return (self.kernel - 1) * self.dilation + 1

    def __post_init__(self) -> None:
        if self.kernel < 1 or self.stride < 1 or self.dilation < 1:
            raise ValueError(f"kernel, stride and dilation must be >= 1: {self}")
        if self.auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise ValueError(f"unknown auto_pad {self.auto_pad!r}")


def axis_geometry(ax: AxisPool, n: int) -> tuple[int, int, int]:
    """``(out, pad_begin, pad_end)`` of one axis of length ``n``, as ONNX defines them."""
    s, span = ax.stride, ax.span
    if ax.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = -(-n // s)
        total = max((out - 1) * s + span - n, 0)
        small, big = total // 2, total - total // 2
        pb, pe = (small, big) if ax.auto_pad == "SAME_UPPER" else (big, small)
        return out, pb, pe
    if ax.auto_pad == "VALID":
        return max(-(-(n - span + 1) // s), 0), 0, 0
    pb, pe = ax.pad_begin, ax.pad_end
    num = n + pb + pe - span
    if ax.ceil_mode:
        out = -(-num // s) + 1
        if (out - 1) * s >= n + pb:  # the last window would start in the right padding: ONNX drops it
            out -= 1
    else:
        out = num // s + 1
    return max(out, 0), pb, pe


def axis_out_sizes(ax: AxisPool, n: int) -> set[int]:
    """Window counts that implementations give for this axis: the ONNX count, plus in ceil mode the
    count before dropping a window that starts in the right padding (onnx's shape inference keeps it).
    Such a window has no real element, so both describe the same dependence on the input."""
    out = axis_geometry(ax, n)[0]
    sizes = {out}
    if ax.auto_pad == "NOTSET" and ax.ceil_mode:
        sizes.add(max(-(-(n + ax.pad_begin + ax.pad_end - ax.span) // ax.stride) + 1, 0))
    return sizes


def axis_windows(ax: AxisPool, n: int) -> tuple[list[np.ndarray], int, int]:
    """The positions (input coordinates, padding included) of every window, and the pads."""
    out, pb, pe = axis_geometry(ax, n)
    offsets = np.arange(ax.kernel) * ax.dilation
    return [o * ax.stride - pb + offsets for o in range(out)], pb, pe


def axis_overlap(ax: AxisPool, n: int) -> int:
    """Exact largest number of windows that contain one real element of an axis of length ``n``."""
    windows, _, _ = axis_windows(ax, n)
    count = np.zeros(n, dtype=np.int64)
    for w in windows:
        real = w[(w >= 0) & (w < n)]
        count[real] += 1  # positions inside one window are distinct, so no double counting
    return int(count.max()) if n > 0 else 0


def overlap_any_size(ax: AxisPool) -> int:
    """Largest number of windows containing one element, for every axis length and any pads.

    Element ``i`` lies in window ``o`` at offset ``j`` iff ``o s = i + p - j d``: for each ``j`` at most
    one ``o``, and only the ``j`` with ``j d`` in one residue class mod ``s`` qualify. Those ``j`` form
    an arithmetic progression of step ``s / gcd(d, s)``, so there are at most ``ceil(k gcd(d, s) / s)``.
    """
    g = math.gcd(ax.dilation, ax.stride)
    return -(-ax.kernel * g // ax.stride)


# Per-axis work limits for declared sizes (a fuzzed 2^31 input must not allocate or loop over it).
_MAX_DENSE_AXIS = 4096
_MAX_COUNT_AXIS = 200_000


_MAX_WINDOW = 4096


def _huge_window(ax: AxisPool) -> bool:
    """Windows (or pads, strides) so large that enumerating them would not end (kernel 2^31)."""
    return ax.span + ax.stride + ax.pad_begin + ax.pad_end > _MAX_WINDOW


def axis_avg_matrix(ax: AxisPool, n: int, count_include_pad: bool) -> np.ndarray:
    """The ``out x n`` matrix of AveragePool along one axis (rows: windows; columns: real elements).

    Divisor: the number of real positions (``count_include_pad = 0``) or of positions inside the
    padded range ``[-pad_begin, n + pad_end)`` (``= 1``; onnxruntime and torch clip ceil-mode windows
    to that range). A window with no real element only yields a constant and gets a zero row.
    """
    windows, pb, pe = axis_windows(ax, n)
    a = np.zeros((len(windows), n), dtype=np.float64)
    for r, w in enumerate(windows):
        real = w[(w >= 0) & (w < n)]
        if real.size == 0:
            continue
        div = int(np.count_nonzero((w >= -pb) & (w < n + pe))) if count_include_pad else real.size
        a[r, real] = 1.0 / div
    return a


def axis_avg_schur(ax: AxisPool, n: int, count_include_pad: bool) -> float:
    """Schur test ``sqrt(||A||_1 ||A||_inf)`` for one axis: max column sum (sum over the windows
    containing an element of ``1/m_j``) times max row sum (1 for a window of real elements only)."""
    a = axis_avg_matrix(ax, n, count_include_pad)
    if a.size == 0:
        return 0.0
    return math.sqrt(float(a.sum(axis=0).max()) * float(a.sum(axis=1).max()))


def avg_schur_any_size(ax: AxisPool, count_include_pad: bool) -> float:
    """``sup over n >= 1`` of the per-axis Schur bound.

    The column and row sums near the left edge do not depend on ``n`` once ``n`` exceeds the border
    zones, those in the middle are the full-window values, and those near the right edge depend on
    ``n`` only through ``n mod s`` (output count and SAME pads shift by one window when ``n`` grows by
    ``s``). So every value the sums take for some ``n`` is already taken for an ``n`` up to a border
    size plus one period, and a scan over that range is the exact supremum.
    """
    border = 4 * (ax.span + ax.stride) + 2 * (ax.pad_begin + ax.pad_end) + 8
    return max(axis_avg_schur(ax, n, count_include_pad) for n in range(1, border + ax.stride + 1))


def avg_pool_norm(axes: list[AxisPool], sizes: list[int | None], count_include_pad: bool) -> NormBound:
    """Sound upper bound of AveragePool's L2 operator norm (per channel; channels are independent).

    All sizes known: the product of the exact per-axis spectral norms (Kronecker structure; each with
    the SVD rounding allowance). Otherwise the product of per-axis Schur bounds, taken as the supremum
    over all lengths for an unknown axis. ``lower`` is the exact norm when available.
    """
    value, lower, schur = 1.0, 1.0, 1.0
    # A huge declared axis would need an out x n matrix: bound it as an axis of any length instead
    # (the supremum over all lengths is at least the value at this one).
    sizes = [n if n is not None and n <= _MAX_DENSE_AXIS and not _huge_window(ax) else None
             for ax, n in zip(axes, sizes, strict=True)]
    exact = all(n is not None for n in sizes)
    for ax, n in zip(axes, sizes, strict=True):
        if _huge_window(ax):
            # Schur test without enumerating windows: each row sums to at most 1 (the divisor counts
            # at least the real elements) and each column to at most the overlap count.
            schur *= math.sqrt(overlap_any_size(ax))
            continue
        if n is None:
            schur *= avg_schur_any_size(ax, count_include_pad)
            continue
        schur *= axis_avg_schur(ax, n, count_include_pad)
        a = axis_avg_matrix(ax, n, count_include_pad)
        nb = spectral_norm(a)
        value *= nb.value
        lower *= nb.lower if nb.lower is not None else 0.0
    # Products of rounded factors: one ulp-scale allowance per factor.
    grow = 1 + 8 * len(axes) * EPS64
    schur = float(np.nextafter(schur * grow, np.inf))
    value = float(np.nextafter(value * grow, np.inf))
    if exact and value <= schur:
        return NormBound(float(value), "exact per-axis SVD (Kronecker product)", float(lower))
    how = "Schur test" + ("" if exact else ", sup over unknown sizes")
    return NormBound(schur, how, float(lower) if exact else None)


def pool_overlap(axes: list[AxisPool], sizes: list[int | None]) -> int:
    """Largest number of windows containing one element: product of per-axis exact counts
    (``overlap_any_size`` for an axis of unknown length)."""
    m = 1
    for ax, n in zip(axes, sizes, strict=True):
        # Counting visits every window; past _MAX_COUNT_AXIS use the count valid for every length.
        m *= overlap_any_size(ax) if n is None or n > _MAX_COUNT_AXIS or _huge_window(ax) else axis_overlap(ax, n)
    return m
