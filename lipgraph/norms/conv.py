"""Operator norms of ONNX ``Conv`` and ``ConvTranspose`` (SPEC sec. 4, "Convolution").

Pure numpy, N-d spatial (1-D, 2-D, 3-D). Layouts follow ONNX: input ``(B, C, D1, ..., Dd)``,
Conv weight ``(M, C/group, k1, ..., kd)``, pads ``[x1_b, x2_b, ..., x1_e, x2_e]``. Output
position ``o`` of a Conv reads input position ``i = o*s + j*dil - p_b`` through tap ``j``.

Three sound bounds, every one ``>= ||op||_2`` in real arithmetic, rounding allowances included:

* :func:`conv_dense_bound` -- exact: the dense matrix of the op on the known input size and its SVD
  (only for small operators).
* :func:`conv_circulant_bound` -- the zero-padded (strided) conv, rewritten space-to-depth into a
  stride-1 correlation, is embedding -> circular correlation on a grid -> restriction (see
  :func:`circulant_grid` for the grid condition), so its norm is at most the circular one, which is the
  largest singular value of the kernel symbol over the grid frequencies (Sedghi et al. 2019).
* :func:`conv_lmt_bound` -- the LMT overlap bound (Tsuzuku et al. 2018), independent of the input size.

:func:`conv_bound` picks the tightest of those that apply. ConvTranspose has the norm of the conv
it is the adjoint of; :func:`conv_transpose_adjoint_geometries` turns its attributes into that conv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from lipgraph.norms import EPS64, NormBound, inflate
from lipgraph.norms.dense import spectral_norm
from lipgraph.norms.stack_sv import top_sv_stack

# Dense exact path: at most this many flops (rough SVD cost, summed over groups).
_DENSE_FLOP_BUDGET = 1.2e9
# Symbol arrays larger than this many complex entries are processed in frequency chunks.
_CHUNK_ENTRIES = 4_000_000
# The circulant bound visits every frequency of its grid (and builds an index array of it): above this
# many grid points (a 2048 x 2048 input) it would exhaust memory and time, so the LMT bound is used.
_MAX_CIRCULANT_POINTS = 2**22
# Multiply-adds allowed for the power-iteration lower estimate (a slack figure, not a bound): at the
# old 2e9 it cost a third of a ResNet-18's bound time, more than the certified bounds themselves.
_POWER_LOWER_BUDGET = 4e8


@dataclass(frozen=True)
class ConvGeometry:
    """One Conv on a known input: everything the dense/circulant bounds need."""

    in_spatial: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Attributes


def _per_axis(values: Sequence[int] | None, d: int, default: int, name: str) -> tuple[int, ...]:
    if values is None or len(values) == 0:
        return (default,) * d
    vals = tuple(int(v) for v in values)
    if len(vals) != d:
        raise ValueError(f"{name} has {len(vals)} entries for {d} spatial axes")
    return vals


def output_size(n: int, k: int, s: int, dil: int, pb: int, pe: int) -> int:
    """ONNX Conv output length along one axis (floor mode)."""
    return (n + pb + pe - ((k - 1) * dil + 1)) // s + 1


def resolve_pads(
    in_spatial: Sequence[int | None],
    kernel_spatial: Sequence[int],
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    auto_pad: str | bytes | None = "NOTSET",
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Begin and end pads per spatial axis, as the ONNX Conv spec defines them.

    NOTSET: the ``pads`` attribute (``[x1_b, ..., x1_e, ...]``, default 0). VALID: no padding.
    SAME_UPPER / SAME_LOWER: output ``ceil(n / s)``; total pad
    ``max(0, (out - 1) s + (k - 1) dil + 1 - n)``, the odd extra on the end (UPPER) or the begin
    (LOWER). SAME needs a known input size (ValueError otherwise). Negative pads raise ValueError.
    """
    d = len(kernel_spatial)
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    mode = (auto_pad or "NOTSET").upper()
    s = _per_axis(strides, d, 1, "strides")
    dl = _per_axis(dilations, d, 1, "dilations")
    if mode == "NOTSET":
        p = _per_axis(pads, 2 * d, 0, "pads")
        begins, ends = p[:d], p[d:]
    elif mode == "VALID":
        begins, ends = (0,) * d, (0,) * d
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        b: list[int] = []
        e: list[int] = []
        for n, k, st, di in zip(in_spatial, kernel_spatial, s, dl, strict=True):
            if n is None:
                raise ValueError(f"auto_pad={mode} needs a known input size")
            out = -(-int(n) // st)
            total = max(0, (out - 1) * st + (int(k) - 1) * di + 1 - int(n))
            small, big = total // 2, total - total // 2
            b.append(small if mode == "SAME_UPPER" else big)
            e.append(big if mode == "SAME_UPPER" else small)
        begins, ends = tuple(b), tuple(e)
    else:
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    if any(v < 0 for v in begins + ends):
        raise ValueError(f"negative pads {list(begins) + list(ends)} are not supported")
    return tuple(begins), tuple(ends)


def _check(weight: np.ndarray, groups: int) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim < 3:
        raise ValueError(f"conv weight needs rank >= 3, got shape {w.shape}")
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"{w.shape[0]} output channels are not divisible by group={groups}")
    return w


def _grouped(w: np.ndarray, groups: int) -> np.ndarray:
    """(M, C/g, k...) -> (g, M/g, C/g, k...): group ``g`` maps its own C/g inputs to its M/g outputs."""
    return w.reshape(groups, w.shape[0] // groups, *w.shape[1:])


def _dilate(wg: np.ndarray, dilations: Sequence[int]) -> np.ndarray:
    """Insert ``dil - 1`` zeros between taps along every spatial axis (the dilated kernel)."""
    d = len(dilations)
    ks = wg.shape[-d:]
    spans = tuple((k - 1) * dl + 1 for k, dl in zip(ks, dilations, strict=True))
    out = np.zeros(wg.shape[:-d] + spans, dtype=wg.dtype)
    out[(Ellipsis,) + tuple(slice(None, None, dl) for dl in dilations)] = wg
    return out


# --------------------------------------------------------------------------------------------
# The operator itself (used for the dense matrix and for the power-iteration lower estimate)


def _windows(geo: ConvGeometry, ks: Sequence[int], outs: Sequence[int]):
    """For every tap: the strided window of the padded input that the tap reads."""
    for tap in product(*(range(k) for k in ks)):
        win = tuple(
            slice(j * dl, j * dl + (o - 1) * s + 1, s)
            for j, dl, o, s in zip(tap, geo.dilations, outs, geo.strides, strict=True)
        )
        yield tap, win


def _conv_apply(wg: np.ndarray, geo: ConvGeometry, x: np.ndarray) -> np.ndarray:
    """Apply the grouped zero-padded conv: x (g, C/g, B, n...) -> y (g, M/g, B, out...)."""
    d = len(geo.in_spatial)
    ks = wg.shape[-d:]
    outs = _out_spatial(geo, ks)
    padded = [n + pb + pe for n, pb, pe in zip(geo.in_spatial, geo.pads_begin, geo.pads_end, strict=True)]
    g, cg, b = x.shape[:3]
    xp = np.zeros((g, cg, b) + tuple(padded), dtype=np.float64)
    xp[(Ellipsis,) + tuple(slice(pb, pb + n) for pb, n in zip(geo.pads_begin, geo.in_spatial, strict=True))] = x
    y = np.zeros((g, wg.shape[1], b * math.prod(outs)), dtype=np.float64)
    for tap, win in _windows(geo, ks, outs):
        # (g, M/g, C/g) @ (g, C/g, B*out) -> (g, M/g, B*out)
        y += wg[(Ellipsis,) + tap] @ xp[(Ellipsis,) + win].reshape(g, cg, -1)
    return y.reshape((g, wg.shape[1], b) + tuple(outs))


def _conv_adjoint(wg: np.ndarray, geo: ConvGeometry, y: np.ndarray) -> np.ndarray:
    """The adjoint of :func:`_conv_apply`: y (g, M/g, B, out...) -> x (g, C/g, B, n...)."""
    d = len(geo.in_spatial)
    ks = wg.shape[-d:]
    outs = y.shape[3:]
    g, mg, b = y.shape[:3]
    padded = [n + pb + pe for n, pb, pe in zip(geo.in_spatial, geo.pads_begin, geo.pads_end, strict=True)]
    xp = np.zeros((g, wg.shape[2], b) + tuple(padded), dtype=np.float64)
    flat = y.reshape(g, mg, -1)
    for tap, win in _windows(geo, ks, outs):
        contrib = np.swapaxes(wg[(Ellipsis,) + tap], 1, 2) @ flat
        xp[(Ellipsis,) + win] += contrib.reshape((g, wg.shape[2], b) + tuple(outs))
    return xp[(Ellipsis,) + tuple(slice(pb, pb + n) for pb, n in zip(geo.pads_begin, geo.in_spatial, strict=True))]


def conv_power_lower(
    weight: np.ndarray, groups: int, geo: ConvGeometry, steps: int = 12, seed: int = 0
) -> float:
    """A LOWER estimate of the conv's norm (power iteration on the real operator); never a bound."""
    wg = _grouped(_check(weight, groups), groups)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((groups, wg.shape[2], 1) + tuple(geo.in_spatial))
    est = 0.0
    for _ in range(steps):
        nx = float(np.linalg.norm(x))
        if nx == 0.0 or not np.isfinite(nx):
            return 0.0
        x /= nx
        y = _conv_apply(wg, geo, x)
        est = float(np.linalg.norm(y))
        x = _conv_adjoint(wg, geo, y)
    return est


def conv_dense_matrix(wg_one: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Dense matrix of one group's conv, (M/g * prod(out)) x (C/g * prod(n)), exact copies of weights."""
    c = wg_one.shape[1]
    n_in = c * math.prod(geo.in_spatial)
    # Basis vector b is column b: x (1, C, B, n...) with x[0, c, b, pos] = 1 for b = (c, pos).
    basis = np.eye(n_in, dtype=np.float64).reshape((n_in, c) + tuple(geo.in_spatial))
    y = _conv_apply(wg_one[None], geo, np.swapaxes(basis, 0, 1)[None])  # (1, M/g, B, out...)
    return np.swapaxes(y[0], 0, 1).reshape(n_in, -1).T


def _out_spatial(geo: ConvGeometry, ks: Sequence[int]) -> list[int]:
    return [
        output_size(n, k, s, dl, pb, pe)
        for n, k, s, dl, pb, pe in zip(
            geo.in_spatial, ks, geo.strides, geo.dilations, geo.pads_begin, geo.pads_end, strict=True
        )
    ]


def dense_cost(weight_shape: Sequence[int], groups: int, geo: ConvGeometry) -> float:
    """Rough flop count of the dense exact path (matrix build plus SVD, all groups)."""
    d = len(geo.in_spatial)
    ks = weight_shape[-d:]
    outs = _out_spatial(geo, ks)
    rows = weight_shape[0] // groups * math.prod(outs)
    cols = weight_shape[1] * math.prod(geo.in_spatial)
    return float(groups) * rows * cols * (min(rows, cols) + math.prod(ks))


def conv_dense_bound(weight: np.ndarray, groups: int, geo: ConvGeometry) -> NormBound:
    """Exact norm of the conv on a known input (SVD of its dense matrix per group, max over groups).

    The matrix entries are copies of the weights (each (output, input) pair meets at most one tap),
    so the only rounding is the SVD's, covered by :func:`lipgraph.norms.inflate`.
    """
    w = _check(weight, groups)
    wg = _grouped(w, groups)
    d = len(geo.in_spatial)
    outs = _out_spatial(geo, w.shape[-d:])
    if min(outs) <= 0:
        raise ValueError(f"conv output size {outs} is empty")
    best, lower = 0.0, 0.0
    for g in range(groups):
        nb = spectral_norm(conv_dense_matrix(wg[g], geo))
        best = max(best, nb.value)
        lower = max(lower, nb.lower if nb.lower is not None else 0.0)
    size = "x".join(str(n) for n in geo.in_spatial)
    return NormBound(best, f"exact dense SVD (input {size})", lower)


# --------------------------------------------------------------------------------------------
# Circulant / polyphase bound


def _phase_geometry(n: int, k: int, s: int, dl: int, pb: int, pe: int) -> tuple[int, int, int]:
    """Per axis: (Q, kernel length after space-to-depth; mlo; grid G) for the polyphase rewrite.

    With ``i + p_b = m s + r`` (phase r in [0, s)), the conv reads ``x_r[o + q]`` through the phase
    kernel ``P[(c, r), q] = W_dil[c, q s + r]``, ``q < Q = ceil(K / s)``, ``K`` the dilated span.
    The phase signals live on ``m in [mlo, mhi]``, ``mlo = floor(p_b / s)``, ``mhi = floor((n-1+p_b)/s)``;
    shifted to start at 0 the op is ``y[o] = sum_q P[q] x'[o + q - mlo]`` for ``o < out``.
    On a circular grid G this equals the circular correlation followed by restriction when
    (a) wrapped negative indices (>= -mlo) land in the zero region: G >= mhi + 1;
    (b) the largest index ``out + Q - 2 - mlo`` does not wrap: G >= out + Q - 1 - mlo;
    (c) distinct outputs stay distinct: G >= out; and (d) the kernel fits: G >= Q.
    """
    span = (k - 1) * dl + 1
    q = -(-span // s)
    out = output_size(n, k, s, dl, pb, pe)
    mlo = pb // s
    mhi = (n - 1 + pb) // s
    grid = max(mhi + 1, out + q - 1 - mlo, out, q, 1)
    return q, mlo, grid


def circulant_grid(geo: ConvGeometry, kernel_spatial: Sequence[int]) -> tuple[int, ...]:
    """The circular grid (in the space-to-depth domain) used by :func:`conv_circulant_bound`."""
    return tuple(
        _phase_geometry(n, k, s, dl, pb, pe)[2]
        for n, k, s, dl, pb, pe in zip(
            geo.in_spatial, kernel_spatial, geo.strides, geo.dilations, geo.pads_begin, geo.pads_end, strict=True
        )
    )


def phase_kernel(weight: np.ndarray, groups: int, strides: Sequence[int], dilations: Sequence[int]) -> np.ndarray:
    """Space-to-depth rewrite: (M, C/g, k...) -> (g, M/g, C/g * prod(s), Q...), an exact stride-1 kernel."""
    w = _check(weight, groups)
    d = w.ndim - 2
    wd = _dilate(_grouped(w, groups), dilations)  # (g, mg, cg, K...)
    spans = wd.shape[-d:]
    qs = [-(-K // s) for K, s in zip(spans, strides, strict=True)]
    padded = np.zeros(wd.shape[:3] + tuple(q * s for q, s in zip(qs, strides, strict=True)))
    padded[(Ellipsis,) + tuple(slice(0, K) for K in spans)] = wd
    # Split each axis a = q*s + r into (q, r), then move the phases r next to the input channels.
    shape = list(padded.shape[:3])
    for q, s in zip(qs, strides, strict=True):
        shape += [q, s]
    p = padded.reshape(shape)
    q_axes = [3 + 2 * i for i in range(d)]
    r_axes = [4 + 2 * i for i in range(d)]
    p = p.transpose([0, 1, 2] + r_axes + q_axes)
    g, mg, cg = p.shape[:3]
    return p.reshape((g, mg, cg * math.prod(strides)) + tuple(qs))


def _half_frequencies(grid: Sequence[int]) -> np.ndarray:
    """One frequency index per pair {u, -u mod N} of the grid, as an (F, d) integer array.

    The kernel is real, so the symbol at -u is the complex conjugate of the symbol at u (same
    singular values): half the grid covers every frequency.
    """
    idx = np.indices(tuple(grid)).reshape(len(grid), -1).T  # (prod N, d)
    neg = (-idx) % np.asarray(grid)
    lin = np.ravel_multi_index(idx.T, tuple(grid))
    lin_neg = np.ravel_multi_index(neg.T, tuple(grid))
    return idx[lin <= lin_neg]


def _twiddles(freqs: np.ndarray, qshape: Sequence[int], grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of ``2 pi sum_d u_d q_d / N_d`` for every (frequency u, tap q): two (F, T) arrays.

    Per axis the integer ``u_d q_d mod N_d`` is reduced exactly before the angle is formed, and the
    per-axis factors are multiplied as complex numbers, so each twiddle is within a few ulps.
    """
    taps = np.indices(tuple(qshape)).reshape(len(qshape), -1)  # (d, T)
    tw = np.ones((freqs.shape[0], taps.shape[1]), dtype=np.complex128)
    for ax, n in enumerate(grid):
        k = np.outer(freqs[:, ax], taps[ax]) % n
        tw *= np.exp(-2j * np.pi * k / n)
    return tw.real.copy(), tw.imag.copy()


def _dft_allowance(pk: np.ndarray) -> float:
    """Additive bound on ``||K_hat(u) - fl(K_hat(u))||_2`` at every frequency u (direct DFT).

    Each symbol entry is a sum of T products of a weight and a twiddle, computed as two real dot
    products. A dot product of length T in any summation order errs by at most ``gamma_T`` times
    the sum of the absolute products (Higham, Accuracy and Stability, sec. 3.1); each twiddle is
    within ``~4 d u`` of exact (d per-axis exponentials, d - 1 complex products). So every entry
    errs by at most ``(T + 8 d + 4) u ||P_ij||_1`` per real part, and
    ``||E(u)||_2 <= ||E(u)||_F <= 2 (T + 8 d + 4) u sqrt(sum_ij ||P_ij||_1^2)`` (factor 2 >= sqrt 2
    for the two parts plus slack). Typically ~1e-14 relative.
    """
    d = pk.ndim - 3
    t = math.prod(pk.shape[3:])
    l1 = np.abs(pk).sum(axis=tuple(range(3, pk.ndim)))  # (g, mg, cp)
    per_group = np.sqrt((l1 * l1).sum(axis=(1, 2)))
    coeff = 2.0 * (t + 8 * d + 4) * EPS64 / (1.0 - (t + 8 * d + 4) * EPS64)
    return float(coeff * float(per_group.max(initial=0.0)) * (1 + 4 * EPS64))


def _top_sv_stack(mats: np.ndarray) -> float:
    """Sound upper bound of max_f sigma_1(mats[f]) (exact arithmetic on the given float64 matrices).

    Batched SVD for small matrices, else a Cholesky certificate against a shared trial value with the
    exact eigensolve as fallback (:func:`lipgraph.norms.stack_sv.top_sv_stack`).
    """
    return top_sv_stack(mats)


def conv_circulant_bound(
    weight: np.ndarray,
    groups: int,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads_begin: Sequence[int],
    pads_end: Sequence[int],
    in_spatial: Sequence[int],
    grid: Sequence[int] | None = None,
) -> NormBound:
    """Sound bound of a zero-padded Conv on a known input size: DFT of the polyphase kernel on a grid.

    The strided conv is rewritten space-to-depth as a stride-1 correlation with the kernel
    ``(M/g, C/g * prod(s), Q...)`` (exact), which is a restriction of a circular correlation on the
    grid of :func:`circulant_grid` (an isometric embedding, a circular op, a coordinate restriction),
    so its norm is at most ``max_w ||P_hat(w)||_2`` over the grid (Sedghi et al. 2019). The symbol is
    a direct DFT over the (few) taps, one BLAS product per chunk of frequencies, on half the grid
    (conjugate symmetry). Groups: the
    op is block diagonal, so the max over groups. Rounding: SVD/eig allowance plus an additive DFT
    allowance (:func:`_dft_allowance`). ``grid`` may override the grid for experiments; a grid below
    the safe one is refused, since it can undercount (SPEC sec. 4).
    """
    w = _check(weight, groups)
    d = w.ndim - 2
    geo = ConvGeometry(
        tuple(int(v) for v in in_spatial),
        _per_axis(strides, d, 1, "strides"),
        _per_axis(dilations, d, 1, "dilations"),
        _per_axis(pads_begin, d, 0, "pads_begin"),
        _per_axis(pads_end, d, 0, "pads_end"),
    )
    safe = circulant_grid(geo, w.shape[2:])
    if grid is None:
        grid = safe
    elif any(gv < sv for gv, sv in zip(grid, safe, strict=True)):
        raise ValueError(f"grid {tuple(grid)} is below the safe grid {safe}")
    outs = _out_spatial(geo, w.shape[2:])
    if min(outs) <= 0:
        raise ValueError(f"conv output size {outs} is empty")
    pk = phase_kernel(w, groups, geo.strides, geo.dilations)  # (g, mg, cp, Q...)
    g, mg, cp = pk.shape[:3]
    if all(q == 1 for q in pk.shape[3:]):
        # A 1x1 phase kernel: the symbol is the same matrix at every frequency (no DFT needed).
        mats = pk.reshape(g, mg, cp)
        value = _top_sv_stack(mats.astype(np.float64))
        dft_err = 0.0
    else:
        value = 0.0
        freqs = _half_frequencies(grid)
        qshape = pk.shape[3:]
        flat = pk.reshape(g * mg * cp, -1).T  # (T, g*mg*cp)
        chunk = max(1, _CHUNK_ENTRIES // max(1, g * mg * cp))
        for f0 in range(0, freqs.shape[0], chunk):
            cos, sin = _twiddles(freqs[f0 : f0 + chunk], qshape, grid)
            sym = (cos @ flat) + 1j * (sin @ flat)  # (F, g*mg*cp): the symbol at each frequency
            sym = np.swapaxes(sym.reshape(-1, g, mg, cp), 0, 1).reshape(-1, mg, cp)
            value = max(value, _top_sv_stack(sym))
        dft_err = _dft_allowance(pk)
    value = float(np.nextafter(value + dft_err, np.inf))
    grid_txt = "x".join(str(v) for v in grid)
    s_txt = "" if all(s == 1 for s in geo.strides) else f", polyphase s={'x'.join(map(str, geo.strides))}"
    return NormBound(value, f"circulant symbol N={grid_txt}{s_txt}", None)


def circular_norm_same_grid(weight: np.ndarray, in_spatial: Sequence[int]) -> float:
    """NOT A BOUND. The circular norm on the input's own grid (N = n), stride 1, one group.

    Kept only for the negative control of SPEC sec. 4: for zero padding it can be below the true
    norm (kernel [1, -1], n = 3, pad 1: 1.732 < 1.848). Nothing in lipgraph uses it as a bound.
    """
    w = np.asarray(weight, dtype=np.float64)
    d = w.ndim - 2
    sym = np.fft.fftn(w, s=tuple(in_spatial), axes=tuple(range(2, 2 + d)))
    mats = np.moveaxis(sym.reshape(sym.shape[:2] + (-1,)), 2, 0)
    return float(np.linalg.svd(mats, compute_uv=False)[:, 0].max())


# --------------------------------------------------------------------------------------------
# LMT overlap bound


def conv_lmt_bound(
    weight: np.ndarray, groups: int, strides: Sequence[int] | None = None, dilations: Sequence[int] | None = None
) -> NormBound:
    """LMT overlap bound, valid for every input size and padding (Tsuzuku et al. 2018).

    ``||y||^2 = sum_o ||W_mat patch_o||^2 <= ||W_mat||^2 sum_o ||patch_o||^2`` and every input
    element lies in at most ``prod_d min(k_d, ceil(K_d / s_d))`` patches (``K_d`` the dilated span: the
    outputs that read it have ``o s`` in an interval of length ``K_d``). Per group, max over groups.
    Measured 1.5x to 2.7x the exact norm on random kernels; used only when the input size is unknown.
    """
    w = _check(weight, groups)
    d = w.ndim - 2
    s = _per_axis(strides, d, 1, "strides")
    dl = _per_axis(dilations, d, 1, "dilations")
    ks = w.shape[2:]
    overlap = math.prod(min(k, -(-((k - 1) * di + 1) // st)) for k, st, di in zip(ks, s, dl, strict=True))
    wg = _grouped(w, groups).reshape(groups, w.shape[0] // groups, -1)
    best, lower = 0.0, 0.0
    for g in range(groups):
        nb = spectral_norm(wg[g])
        best = max(best, nb.value)
        lower = max(lower, nb.lower or 0.0)
    factor = math.sqrt(overlap)
    value = float(np.nextafter(best * factor * (1 + 2 * EPS64), np.inf))
    return NormBound(value, f"LMT overlap sqrt({overlap})*||W_mat||", None)


# --------------------------------------------------------------------------------------------
# Choosing


def conv_bound(
    weight: np.ndarray,
    groups: int,
    strides: Sequence[int] | None,
    dilations: Sequence[int] | None,
    pads_begin: Sequence[int] | None,
    pads_end: Sequence[int] | None,
    in_spatial: Sequence[int | None] | None,
    want_lower: bool = True,
) -> NormBound:
    """The tightest sound bound available for a Conv (each candidate is an upper bound, so the min is).

    Unknown input size: LMT. Known: exact dense SVD when the operator is small, else the circulant
    bound (and the LMT bound if it happens to be lower). ``lower``: a lower estimate (the dense SVD
    value, or power iteration on the real operator when affordable), never used as a bound.
    """
    w = _check(weight, groups)
    d = w.ndim - 2
    lmt = conv_lmt_bound(w, groups, strides, dilations)
    if in_spatial is None or any(v is None for v in in_spatial):
        return NormBound(lmt.value, f"LMT overlap (input size unknown): {lmt.method}", None)
    geo = ConvGeometry(
        tuple(int(v) for v in in_spatial),  # type: ignore[arg-type]
        _per_axis(strides, d, 1, "strides"),
        _per_axis(dilations, d, 1, "dilations"),
        _per_axis(pads_begin, d, 0, "pads_begin"),
        _per_axis(pads_end, d, 0, "pads_end"),
    )
    outs = _out_spatial(geo, w.shape[2:])
    if min(outs) <= 0:
        raise ValueError(f"conv output size {outs} is empty")
    if dense_cost(w.shape, groups, geo) <= _DENSE_FLOP_BUDGET:
        dense = conv_dense_bound(w, groups, geo)
        if dense.value <= lmt.value:
            return dense
        return NormBound(lmt.value, lmt.method, dense.lower)
    if math.prod(circulant_grid(geo, w.shape[2:])) > _MAX_CIRCULANT_POINTS:
        # A declared input of 10^5 x 10^5 must not allocate its grid: the size-free LMT bound.
        return NormBound(lmt.value, f"LMT overlap (input too large for the circulant bound): {lmt.method}", None)
    circ = conv_circulant_bound(w, groups, geo.strides, geo.dilations, geo.pads_begin, geo.pads_end, geo.in_spatial)
    best = circ if circ.value <= lmt.value else lmt
    lower = None
    # Power iteration costs ~2 * steps applications of the op; skip it for very large layers.
    apply_cost = math.prod(outs) * w.size
    if want_lower and apply_cost * 24 <= _POWER_LOWER_BUDGET:
        lower = conv_power_lower(w, groups, geo)
    return NormBound(best.value, best.method, lower)


# --------------------------------------------------------------------------------------------
# ConvTranspose


def conv_transpose_adjoint_geometries(
    in_spatial: Sequence[int],
    kernel_spatial: Sequence[int],
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    auto_pad: str | bytes | None = "NOTSET",
) -> list[ConvGeometry]:
    """Conv geometries whose norms bound a ConvTranspose (the bound is the max over the list).

    ConvTranspose = (crop or zero-extend) o T_full, where ``T_full`` scatters each input position
    ``i`` to ``i s + j dil`` on the full length ``F = (n - 1) s + (k - 1) dil + 1``, and ``T_full``
    is the adjoint of the VALID stride-s conv on length F with the same weight read as a Conv
    weight ``(C_in, C_out/g, k...)``. Zero extension (output_padding, negative total padding) is an
    isometry; cropping to the window ``[p_b, F - p_e')`` makes the op ``R T_full``, whose adjoint is
    the zero-padded conv on the window's length L with pads ``(p_b, p_e')`` -- so the norm is exactly
    that conv's. Where the ONNX spec and runtimes disagree on the split of a SAME padding, both
    splits are listed (ONNX Runtime puts the odd element of SAME_UPPER at the head, the spec at the
    tail); ``output_shape`` fixes the total crop ``F + output_padding - output_shape`` and both splits
    are listed too. A total <= 0 crops nothing: the full T_full is visible, an exact case.
    """
    d = len(kernel_spatial)
    s = _per_axis(strides, d, 1, "strides")
    dl = _per_axis(dilations, d, 1, "dilations")
    op = _per_axis(output_padding, d, 0, "output_padding")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    mode = (auto_pad or "NOTSET").upper()
    if len(in_spatial) != d:
        raise ValueError(f"input has {len(in_spatial)} spatial axes, kernel {d}")
    full = [
        (int(n) - 1) * st + (int(k) - 1) * di + 1
        for n, k, st, di in zip(in_spatial, kernel_spatial, s, dl, strict=True)
    ]
    per_axis: list[list[tuple[int, int, int]]] = []  # (L, pb, pe) candidates per axis
    has_shape = output_shape is not None and len(output_shape) > 0
    if has_shape and len(output_shape) != d:  # type: ignore[arg-type]
        raise ValueError(f"output_shape has {len(output_shape)} entries for {d} spatial axes")  # type: ignore[arg-type]
    explicit = _per_axis(pads, 2 * d, 0, "pads") if mode == "NOTSET" else None
    for a in range(d):
        f = full[a]
        if mode == "VALID" and not has_shape:
            per_axis.append([(f, 0, 0)])
            continue
        if has_shape or mode in ("SAME_UPPER", "SAME_LOWER"):
            target = int(output_shape[a]) if has_shape else int(in_spatial[a]) * s[a]  # type: ignore[index]
            total = f + op[a] - target
            if total <= 0:
                per_axis.append([(f, 0, 0)])
                continue
            splits = {(total // 2, total - total // 2), (total - total // 2, total // 2)}
        elif mode == "NOTSET":
            assert explicit is not None
            pb, pe = explicit[a], explicit[d + a]
            if pb < 0 or pe < 0:
                raise ValueError("negative pads are not supported")
            splits = {(pb, pe)}
        else:
            raise ValueError(f"unknown auto_pad {auto_pad!r}")
        cands = []
        for pb, pe in sorted(splits):
            end = min(f, f + op[a] - pe)  # the visible window of T_full's output is [pb, end)
            cands.append((max(0, end - pb), pb, f - end if end > pb else f - pb))
        per_axis.append(cands)
    geos = []
    for combo in product(*per_axis):
        geos.append(
            ConvGeometry(
                tuple(c[0] for c in combo), s, dl, tuple(c[1] for c in combo), tuple(c[2] for c in combo)
            )
        )
    return geos


def conv_transpose_bound(
    weight: np.ndarray,
    groups: int,
    in_spatial: Sequence[int | None] | None,
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    auto_pad: str | bytes | None = "NOTSET",
    want_lower: bool = True,
) -> NormBound:
    """Sound bound of a ConvTranspose with ONNX weight ``(C_in, C_out/g, k...)``: its adjoint conv's."""
    w = _check(weight, groups)
    if in_spatial is None or any(v is None for v in in_spatial):
        lmt = conv_lmt_bound(w, groups, strides, dilations)
        return NormBound(lmt.value, f"LMT overlap of the adjoint conv (input size unknown): {lmt.method}", None)
    geos = conv_transpose_adjoint_geometries(
        [int(v) for v in in_spatial], w.shape[2:], strides, dilations, pads, output_padding, output_shape, auto_pad
    )
    best: NormBound | None = None
    lower: float | None = None
    lowers: list[float | None] = []
    for geo in geos:
        if min(geo.in_spatial) <= 0:
            nb = NormBound(0.0, "empty output window", 0.0)
        else:
            nb = conv_bound(
                w, groups, geo.strides, geo.dilations, geo.pads_begin, geo.pads_end, geo.in_spatial, want_lower
            )
        if best is None or nb.value > best.value:
            best = nb
        lowers.append(nb.lower)
    assert best is not None
    lower = None if any(v is None for v in lowers) else min(v for v in lowers if v is not None)
    note = "" if len(geos) == 1 else f" (max over {len(geos)} pad splits)"
    return NormBound(best.value, f"adjoint conv: {best.method}{note}", lower)
