"""The autocorrelation formed block by block (conv_gram._block_products, gram_kernel32._block_products32), the
column supports of strided phase kernels, and the cheaper reductions of this round (tap_l1, drop_zero_lines,
the moduli scratch of stack_sv32), against oracles: every R_delta summed in extended precision (x87 long
double, 64-bit mantissa) from its definition, checked entrywise against the per-entry rounding bound the
allowance rests on; the previous whole-stack products; plain numpy reductions."""

from __future__ import annotations

import numpy as np
import pytest

from lipgraph.norms import EPS64, conv_fft, conv_gram, gram_kernel32, stack_sv32
from lipgraph.norms.stack_sv32 import U32

LD = np.longdouble
pytestmark = pytest.mark.skipif(np.finfo(LD).eps > 2.0**-60, reason="needs an extended-precision long double")


def _oracle_r(pk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R_delta in long double, the sum of |terms| of every entry, deltas) on the smaller side, from the definition
    ``R_delta = sum_{q - q' = delta} X_q X_q'^T`` (one loop over tap pairs: no shared code with the module)."""
    g, mg, cp = pk.shape[:3]
    qs = pk.shape[3:]
    d = len(qs)
    taps = np.indices(qs).reshape(d, -1).T
    x = np.moveaxis(pk.reshape(g, mg, cp, -1), 3, 1)
    if cp < mg:
        x = np.swapaxes(x, 2, 3)
    m = x.shape[2]
    deltas = np.indices(tuple(2 * q - 1 for q in qs)).reshape(d, -1).T - (np.asarray(qs) - 1)
    index = {tuple(int(v) for v in dl): k for k, dl in enumerate(deltas)}
    r = np.zeros((g, len(deltas), m, m), dtype=LD)
    a = np.zeros_like(r)
    xl = x.astype(LD)
    for gi in range(g):
        for ia, qa in enumerate(taps):
            for ib, qb in enumerate(taps):
                k = index[tuple(int(v) for v in qa - qb)]
                r[gi, k] += xl[gi, ia] @ xl[gi, ib].T
                a[gi, k] += np.abs(xl[gi, ia]) @ np.abs(xl[gi, ib]).T
    return r, a, deltas


def _strided_pk(rng, out_c, in_c, k, s, zero_taps=False) -> np.ndarray:
    w = rng.standard_normal((out_c, in_c, k, k)) * rng.uniform(0.01, 100.0, size=(out_c, 1, 1, 1))
    if zero_taps:
        w[:, :, 0, :] = 0.0  # a kernel row of zeros: the supports change shape
    return conv_gram.drop_zero_lines(conv_fft.phase_kernel(w, 1, (s, s), (1, 1)))


@pytest.mark.parametrize(
    ("out_c", "in_c", "k", "s", "zero_taps"),
    [
        (20, 9, 3, 2, False),  # four phases, supports of 4, 2, 2 and 1 taps
        (9, 20, 3, 2, False),  # fewer inputs than outputs x phases: the transposed side
        (16, 5, 5, 3, False),  # stride 3 on a 5 x 5 kernel: nine supports
        (14, 6, 3, 2, True),  # a zero kernel row: supports with fewer taps
        (12, 12, 3, 1, False),  # stride 1: one support of every tap
    ],
)
def test_block_products_match_the_extended_precision_oracle_within_the_entrywise_bound(
    monkeypatch, out_c, in_c, k, s, zero_taps
):
    """Every entry of every R_delta within gamma_{n+T} (the allowance's factor) of the long-double sum, relative
    to the sum of its terms' moduli; each positive offset the exact transpose of its negative one."""
    monkeypatch.setattr(conv_gram, "_BLOCK_MIN_SIDE", 1)  # the block path on small shapes
    rng = np.random.default_rng(out_c * 100 + in_c + k + s)
    pk = _strided_pk(rng, out_c, in_c, k, s, zero_taps)
    gk = conv_gram.gram_kernel(pk)
    want, absum, deltas = _oracle_r(pk)
    assert np.array_equal(gk.deltas, deltas)
    n, t = gk.inner, gk.taps
    gamma = (n + t) * EPS64 / (1 - (n + t) * EPS64)
    diff = np.abs(gk.r.astype(LD) - want)
    assert np.all(diff <= gamma * absum), float(np.max(diff / np.maximum(absum, 1e-300)))
    for dl, kk in {tuple(int(v) for v in d): i for i, d in enumerate(deltas)}.items():
        neg = int(np.flatnonzero((deltas == -np.asarray(dl)).all(axis=1))[0])
        assert np.array_equal(gk.r[:, kk], np.swapaxes(gk.r[:, neg], 1, 2))


def test_the_oracle_catches_an_untransposed_offset(monkeypatch):
    """The comparison above can fail: the positive offsets copied without the transpose are caught."""
    monkeypatch.setattr(conv_gram, "_BLOCK_MIN_SIDE", 1)
    rng = np.random.default_rng(5)
    pk = _strided_pk(rng, 20, 9, 3, 2)
    gk = conv_gram.gram_kernel(pk)
    want, absum, deltas = _oracle_r(pk)
    bad = gk.r.copy()
    index = {tuple(int(v) for v in d): i for i, d in enumerate(deltas)}
    for dl, kk in index.items():
        if dl > (0, 0):
            bad[:, kk] = gk.r[:, index[tuple(-v for v in dl)]]
    gamma = (gk.inner + gk.taps) * EPS64 * 2
    assert np.any(np.abs(bad.astype(LD) - want) > gamma * absum)


def test_block_products_equal_the_whole_stack_product_within_its_rounding(monkeypatch):
    """The block path and the previous whole-stack symmetric product agree to the rounding of both."""
    rng = np.random.default_rng(11)
    pk = _strided_pk(rng, 24, 10, 3, 2)
    monkeypatch.setattr(conv_gram, "_BLOCK_MIN_SIDE", 10**9)
    old = conv_gram.gram_kernel(pk)
    monkeypatch.setattr(conv_gram, "_BLOCK_MIN_SIDE", 1)
    new = conv_gram.gram_kernel(pk)
    assert new.inner == old.inner and new.taps == old.taps and new.s_fro2 == old.s_fro2
    scale = np.abs(old.r).max()
    assert np.abs(new.r - old.r).max() <= 1e-14 * scale


def test_support_parts_keep_the_depth_inside_n_plus_t():
    """Column supports are used only while the deepest sum stays within the allowance's n + T; a kernel whose
    supports would be deeper (many single-column supports of every tap but one) gets one group."""
    rng = np.random.default_rng(2)
    pk = _strided_pk(rng, 20, 9, 3, 2)
    x = np.moveaxis(pk.reshape(*pk.shape[:3], -1), 3, 1)
    parts = conv_gram._support_parts(x)
    t, n = x.shape[1], x.shape[3]
    assert sorted(tp.size for tp, _ in parts) == [1, 2, 2, 4]
    assert sorted(np.concatenate([c for _, c in parts]).tolist()) == list(range(n))
    assert max(c.size for _, c in parts) + sum(tp.size for tp, _ in parts) <= n + t
    # Each column its own support (every tap but a different one): depth 1 + n (T - 1) > n + T.
    t2, n2 = 4, 4
    x2 = np.ones((1, t2, 3, n2))
    for col in range(n2):
        x2[0, col, :, col] = 0.0
    parts2 = conv_gram._support_parts(x2)
    assert len(parts2) == 1 and parts2[0][1] is None and parts2[0][0].size == t2


def test_support_parts_skip_columns_that_are_zero_at_every_tap():
    x = np.ones((1, 3, 2, 5))
    x[:, :, :, 1] = 0.0
    x[:, 0, :, 3] = 0.0
    parts = conv_gram._support_parts(x)
    cols = np.concatenate([c for _, c in parts])
    assert 1 not in cols.tolist() and sorted(cols.tolist()) == [0, 2, 3, 4]


def test_float32_block_products_are_the_whole_stack_products(monkeypatch):
    """The float32 tier's block path gives the same numbers as the whole-stack blocked product (the same
    blocked dot products; transposes exact), and the same allowance."""
    rng = np.random.default_rng(4)
    pk = rng.standard_normal((1, 12, 16, 3, 3)) * rng.uniform(0.1, 10.0, size=(1, 12, 1, 1, 1))
    monkeypatch.setattr(gram_kernel32, "_BLOCK_MIN_SIDE", 10**9)
    old = gram_kernel32.gram_kernel32(pk)
    monkeypatch.setattr(gram_kernel32, "_BLOCK_MIN_SIDE", 1)
    new = gram_kernel32.gram_kernel32(pk)
    assert old is not None and new is not None and new.err == old.err
    scale = float(np.abs(old.r).max())
    assert np.abs(new.r.astype(np.float64) - old.r).max() <= 64 * U32 * scale


@pytest.mark.parametrize("scale", [1.0, 1e-170, 1e150])
def test_tap_l1_matches_the_plain_sum(scale):
    rng = np.random.default_rng(8)
    pk = rng.standard_normal((2, 7, 5, 3, 3)) * scale
    pk[0, 1] = 0.0
    got = conv_gram.tap_l1(pk)
    want = np.abs(pk.astype(LD)).sum(axis=(3, 4))
    t = 9
    assert np.all(np.abs(got.astype(LD) - want) <= t * EPS64 * want)


def test_tap_l1_keeps_nan_and_inf():
    pk = np.ones((1, 2, 2, 2, 2))
    pk[0, 0, 1, 1, 0] = np.nan
    pk[0, 1, 0, 0, 1] = -np.inf
    got = conv_gram.tap_l1(pk)
    assert np.isnan(got[0, 0, 1]) and got[0, 1, 0] == np.inf and got[0, 1, 1] == 4.0


def _old_drop(pk):
    g, mg, cp = pk.shape[:3]
    nz = pk.reshape(g, mg, cp, -1) != 0
    return nz.any(axis=(0, 2, 3)), nz.any(axis=(0, 1, 3))


@pytest.mark.parametrize("seed", range(6))
def test_drop_zero_lines_matches_the_plain_reductions(seed):
    """Rows and columns zero at every tap in every group (and only those) are dropped; NaN counts as nonzero."""
    rng = np.random.default_rng(seed)
    pk = rng.standard_normal((3, 6, 7, 2, 2))
    pk[rng.random(pk.shape) < 0.7] = 0.0
    pk[:, 2] = 0.0  # a row zero in every group
    pk[1, :, 4] = 0.0  # a column zero in one group only: kept
    pk[:, :, 5] = 0.0
    if seed % 2:
        pk[2, 3, 5, 1, 0] = np.nan  # a NaN keeps its row and column
    rows, cols = _old_drop(pk)
    got = conv_gram.drop_zero_lines(pk)
    want = pk[:, rows][:, :, cols]
    assert got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)


def test_drop_zero_lines_of_a_zero_kernel_is_one_zero_entry():
    got = conv_gram.drop_zero_lines(np.zeros((2, 4, 3, 3, 3)))
    assert got.shape == (2, 1, 1, 3, 3) and not got.any()


@pytest.mark.parametrize("scale", [1.0, 1e-170, 1e-310, 1e150])
def test_moduli_scratch_bounds_the_largest_part(scale):
    """_abs_gram_bound: the same rho bound as abs_gram_bound, and its second value at least every |re|, |im|
    (squares that underflow included: the 1e-150 floor)."""
    rng = np.random.default_rng(9)
    re = rng.standard_normal((6, 9)) * scale
    im = rng.standard_normal((6, 9)) * scale
    re[0, 0] = 3.0 * scale  # the largest part is real here, and alone in its entry
    im[0, 0] = 0.0
    bound, amax = stack_sv32._abs_gram_bound(re, im, np.empty(re.shape))
    assert bound == stack_sv32.abs_gram_bound(re, im)
    assert amax >= max(np.abs(re).max(), np.abs(im).max())
    assert amax <= 3.0 * scale * (1 + 1e-14) + 1e-150


def test_moduli_scratch_bound_is_not_a_blanket():
    """The second value would fail without its slack: the modulus of (x, 0) is x exactly, so the plain largest
    modulus equals max|re| and only the relative slack and floor lie above it."""
    re = np.array([[2.0**-600, 1.0]])
    im = np.zeros_like(re)
    _, amax = stack_sv32._abs_gram_bound(re, im, np.empty(re.shape))
    assert 1.0 < amax <= 1.0 + 2e-15


def test_woven_dft_equals_the_two_part_dft_and_keeps_inf_in_its_own_part():
    """gram_symbols' interleaved product (several frequencies per chunk) gives the same numbers as the two
    separate products; an infinite R_delta entry stays in its own part (the zeros meet finite twiddles only)."""
    rng = np.random.default_rng(12)
    pk = rng.standard_normal((1, 20, 24, 3, 3))
    gk = conv_gram.gram_kernel(pk)
    grid = (7, 6)
    freqs = np.indices(grid).reshape(2, -1).T
    got = np.concatenate(list(conv_gram.gram_symbols(gk, freqs, grid)))
    zero, pos, _ = conv_gram._paired_offsets(gk.deltas)
    offsets = np.concatenate([gk.deltas[zero : zero + 1], gk.deltas[pos]])
    cos, sin = conv_gram._offset_twiddles(freqs, offsets, grid)
    r0, rp = gk.r[0, zero], gk.r[0, pos]
    want_re = np.einsum("fp,pij->fij", cos, np.concatenate([r0[None], rp + np.swapaxes(rp, 1, 2)]))
    want_im = np.einsum("fp,pij->fij", sin[:, 1:], rp - np.swapaxes(rp, 1, 2))
    scale = np.abs(gk.r).max()
    assert np.abs(got.real - want_re).max() <= 1e-14 * scale
    assert np.abs(got.imag - want_im).max() <= 1e-14 * scale
    r = gk.r.copy()
    r[0, zero, 0, 0] = np.inf  # on the diagonal of R_0: real parts only
    inf_gk = conv_gram.GramKernel(r, gk.deltas, gk.s_fro2, gk.inner, gk.taps)
    out = np.concatenate(list(conv_gram.gram_symbols(inf_gk, freqs, grid)))
    assert np.all(np.isinf(out[:, 0, 0].real)) and not np.isnan(out.imag).any()


def _old_phase_kernel(weight, groups, strides, dilations):
    """The phase kernel as built before the stride-1 shortcut: dilate, pad to whole phases, split, transpose."""
    import math

    from lipgraph.norms.conv_geometry import _dilate, _grouped

    w = np.asarray(weight, dtype=np.float64)
    d = w.ndim - 2
    wd = _dilate(_grouped(w, groups), dilations)
    spans = wd.shape[-d:]
    qs = [-(-k // s) for k, s in zip(spans, strides, strict=True)]
    padded = np.zeros(wd.shape[:3] + tuple(q * s for q, s in zip(qs, strides, strict=True)))
    padded[(Ellipsis,) + tuple(slice(0, k) for k in spans)] = wd
    shape = list(padded.shape[:3])
    for q, s in zip(qs, strides, strict=True):
        shape += [q, s]
    p = padded.reshape(shape).transpose([0, 1, 2] + [4 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)])
    g, mg, cg = p.shape[:3]
    return p.reshape((g, mg, cg * math.prod(strides)) + tuple(qs))


@pytest.mark.parametrize(
    ("shape", "groups", "strides", "dilations"),
    [
        ((8, 6, 3, 3), 1, (1, 1), (1, 1)),
        ((8, 4, 3, 3), 2, (1, 1), (1, 1)),
        ((8, 6, 3, 3), 1, (2, 2), (1, 1)),
        ((8, 6, 3, 3), 1, (1, 1), (2, 1)),
        ((6, 6, 5), 3, (1,), (1,)),
        ((4, 3, 2, 3, 2), 1, (1, 2, 1), (1, 1, 2)),
    ],
)
def test_phase_kernel_is_unchanged_by_the_stride_one_shortcut(shape, groups, strides, dilations):
    rng = np.random.default_rng(len(shape) + groups)
    w = rng.standard_normal(shape)
    got = conv_fft.phase_kernel(w, groups, strides, dilations)
    want = _old_phase_kernel(w, groups, strides, dilations)
    assert got.shape == want.shape and np.array_equal(got, want)
    got[...] = 0.0  # a fresh array: the caller's weights are untouched
    assert np.any(w != 0.0)
