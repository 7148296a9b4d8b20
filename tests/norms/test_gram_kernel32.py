"""The float32 tier of the autocorrelation conv path (lipgraph.norms.gram_kernel32) and the underflow terms of
both float32 tiers, against float64 oracles: every frequency's Gram matrix from numpy's FFT of the phase kernel
(an independent DFT; float64 errs ~1e-15 relative, far below the float32 allowances), the SVD of every symbol,
and the dense matrix of the op run through onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipgraph.norms import conv_fft, conv_tiers, gram_kernel32, stack_sv, stack_sv32
from lipgraph.norms.conv import conv_circulant_bound, phase_kernel
from lipgraph.norms.conv_gram import drop_zero_lines
from tests.norms.test_conv_gram import _circulant_exact, _fft_symbols, exact_norm

TIGHT = math.sqrt(1 + stack_sv.CHOLESKY_TOL) * (1 + 1e-9)


def _exact_grams(pk: np.ndarray, grid) -> np.ndarray:
    """Every frequency's Gram matrix (fftn order, group-major) on the side gram_kernel32 uses: ``A A^H``, or
    ``conj(A^H A)`` when the kernel has fewer inputs than outputs (module conv_gram)."""
    sym = _fft_symbols(pk, grid)
    if pk.shape[1] <= pk.shape[2]:
        return sym @ np.conj(np.swapaxes(sym, 1, 2))
    return np.swapaxes(sym, 1, 2) @ np.conj(sym)


def _allowance_ratio(pk: np.ndarray, grid) -> tuple[float, float, float]:
    """(max over frequencies of ||fl32(G) - G||_2, the allowance, the largest ||G||_2)."""
    gk = gram_kernel32.gram_kernel32(pk)
    assert gk is not None
    freqs = np.indices(grid).reshape(len(grid), -1).T  # every frequency, in fftn's order
    got = gram_kernel32.gram_symbols32(gk, freqs, grid).astype(np.complex128)
    want = _exact_grams(pk, grid)
    dist = max(float(np.linalg.norm(got[i] - want[i], 2)) for i in range(got.shape[0]))
    return dist, gk.err, float(np.linalg.eigvalsh(want)[:, -1].max())


def _adversarial(kind: str, shape, rng) -> np.ndarray:
    pk = rng.standard_normal(shape)
    if kind == "scaled rows":  # rows and columns over four decades
        pk *= 10.0 ** rng.uniform(-2, 2, size=shape[:2] + (1,) * (len(shape) - 2))
    elif kind == "positive":  # no cancellation anywhere: S S^T is the Gram matrix at frequency 0
        pk = np.abs(pk)
    elif kind == "one tap":  # a single dominant tap, the others 1e-6 of it
        pk *= 1e-6
        pk[(Ellipsis,) + (0,) * (len(shape) - 3)] *= 1e6
    elif kind == "huge":
        pk *= 2.0**30
    return pk


@pytest.mark.parametrize("kind", ["random", "scaled rows", "positive", "one tap", "huge"])
@pytest.mark.parametrize(
    ("shape", "grid"),
    [
        ((1, 24, 40, 3, 3), (6, 5)),  # fewer outputs: A A^H
        ((2, 33, 20, 2, 2), (5, 4)),  # fewer inputs: conj(A^H A), two groups
        ((1, 20, 300, 3), (7,)),  # 1-D, inner length 300 > one block of 256
        ((1, 12, 16, 2, 3, 2), (3, 4, 3)),  # 3-D
    ],
)
def test_allowance_covers_every_frequency_against_the_fft_oracle(kind, shape, grid):
    dist, err, top = _allowance_ratio(_adversarial(kind, shape, np.random.default_rng(sum(shape))), grid)
    print(f"{kind} {shape}: max ||fl32(G) - G||_2 / allowance = {dist / err:.3g}, allowance / ||G|| = {err / top:.2e}")
    assert 0 < dist <= err  # a real rounding error, inside its allowance
    assert err < 0.05 * top  # an allowance, not a blanket


def test_the_oracle_comparison_can_fail_a_wrong_offset_table_is_caught():
    """Offsets shifted by one tap (an indexing slip in the accumulation of R_delta) put every frequency's Gram
    matrix far outside the allowance, so the comparison above is not vacuous."""
    pk = np.random.default_rng(4).standard_normal((1, 30, 40, 3, 3))
    grid = (5, 5)
    gk = gram_kernel32.gram_kernel32(pk)
    bad = gram_kernel32.GramKernel32(gk.r, gk.deltas + np.array([1, 0]), gk.err)
    freqs = np.indices(grid).reshape(2, -1).T
    got = gram_kernel32.gram_symbols32(bad, freqs, grid).astype(np.complex128)
    want = _exact_grams(pk, grid)
    assert max(float(np.linalg.norm(got[i] - want[i], 2)) for i in range(len(got))) > 100 * gk.err


def test_subnormal_scale_kernel_breaks_a_relative_allowance_but_not_this_one():
    """Weights of 2^-74: every product (2^-148) is subnormal in float32 and keeps a bit or two. The
    relative part of the allowance alone is exceeded; with the underflow term it holds (oracle: float64)."""
    rng = np.random.default_rng(7)
    pk = rng.standard_normal((1, 20, 24, 3, 3)) * 2.0**-74
    grid = (5, 5)
    dist, err, top = _allowance_ratio(pk, grid)
    gk = gram_kernel32.gram_kernel32(pk)
    s = np.abs(np.moveaxis(pk[0].reshape(20, 24, 9), 2, 0)).sum(axis=0)
    relative_only = math.sqrt(2) * stack_sv32.gamma32(25 + 24 + 1 + 9 + 8) * float(np.linalg.norm(s, 2)) ** 2
    assert dist > 100 * relative_only  # a purely relative allowance is wrong here (measured: 419x)
    assert dist <= gk.err == err


TAU = np.float32(2.0**-126)  # float32's smallest normal number


def _ftz(v: np.ndarray) -> np.ndarray:
    """Flush-to-zero / denormals-are-zero on float32 values: anything below float32's normal range reads as 0."""
    v = np.asarray(v, dtype=np.float32)
    return np.where(np.abs(v) < TAU, np.float32(0.0), v)


def _dot_ftz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a b^T`` in float32 with every operand and every result flushed (a CPU in FTZ + DAZ mode), summed in order."""
    a, b = _ftz(a), _ftz(b)
    acc = np.zeros((a.shape[0], b.shape[0]), dtype=np.float32)
    for k in range(a.shape[1]):
        acc = _ftz(acc + _ftz(a[:, k : k + 1] * b[None, :, k]))
    return acc


def test_gram32_allowance_covers_flush_to_zero_arithmetic():
    """Entries of 2^-66 ... 2^-62: most products fall below 2^-126 and are flushed, each losing up to 2^-126,
    far above the 2^-150 per rounding of gradual underflow. gram32's allowance must cover the Gram matrix computed
    that way (emulated in numpy float32; oracle: the float64 Gram)."""
    rng = np.random.default_rng(9)
    a = (rng.standard_normal((3, 8, 40)) + 1j * rng.standard_normal((3, 8, 40))) * 2.0**-64
    _, err = stack_sv32.gram32(a.real.copy(), a.imag.copy())
    for i in range(3):
        split = np.concatenate([a[i].real, a[i].imag], axis=1)
        cross = _dot_ftz(a[i].imag, a[i].real)
        flushed = _dot_ftz(split, split).astype(np.complex128) + 1j * _ftz(cross - cross.T)
        exact = a[i] @ np.conj(a[i].T)
        dist = float(np.linalg.norm(flushed - exact, 2))
        gradual_only = math.sqrt(2) * 8 * (4 * 40 + 80 + 4) * 2.0**-149 * 3  # the term before flush-to-zero
        assert gradual_only < dist <= err[i]  # a gradual-underflow term alone would be wrong here


def test_gram_kernel32_allowance_covers_flush_to_zero_arithmetic():
    """The autocorrelation path computed with every operand and result flushed (stacked-tap product, the
    accumulation of R_delta, the DFT), on weights of about 2^-64: within the allowance of gram_kernel32."""
    rng = np.random.default_rng(10)
    pk = rng.standard_normal((1, 8, 12, 3, 3)) * 2.0**-64
    gk = gram_kernel32.gram_kernel32(pk)
    x = np.moveaxis(pk[0].reshape(8, 12, 9), 2, 0)  # (T, m, n)
    taps = np.indices((3, 3)).reshape(2, -1).T
    index = {tuple(int(v) for v in dl): k for k, dl in enumerate(gk.deltas)}
    r = np.zeros((gk.deltas.shape[0], 8, 8), dtype=np.float32)
    for a in range(9):
        for b in range(9):
            k = index[tuple(int(v) for v in taps[a] - taps[b])]
            r[k] = _ftz(r[k] + _dot_ftz(x[a], x[b]))
    grid = (5, 5)
    freqs = np.indices(grid).reshape(2, -1).T
    from lipgraph.norms.conv_gram import _offset_twiddles

    cos, sin = (_ftz(t) for t in _offset_twiddles(freqs, gk.deltas, grid))
    flat = r.reshape(r.shape[0], -1)
    got = (_dot_ftz(cos, flat.T).astype(np.complex128) + 1j * _dot_ftz(sin, flat.T)).reshape(-1, 8, 8)
    want = _exact_grams(pk, grid)
    dist = max(float(np.linalg.norm(got[i] - want[i], 2)) for i in range(len(got)))
    assert 0 < dist <= gk.err
    assert dist > math.sqrt(2) * 8 * (25 * (9 * 12 + 9) + 58) * 2.0**-149 * 3  # beyond gradual underflow


def test_float32_cholesky_bound_with_subnormal_entries_covers_the_maximum():
    """A Gram matrix near the smallest target the float32 tier accepts (2^-60), with off-diagonal entries of
    2^-135 (subnormal in float32: lost under flush-to-zero): the bound returned is at least the exact largest
    eigenvalue, and the matrices just above the target are refused."""
    rng = np.random.default_rng(2)
    k, scale = 24, 2.0**-58
    mats = []
    for top in (0.9, 1.0 + 1e-3):
        q, _ = np.linalg.qr(rng.standard_normal((k, k)) + 1j * rng.standard_normal((k, k)))
        g = (q * (np.concatenate([[top], rng.uniform(0, 0.5, k - 1)]) * scale)) @ np.conj(q.T)
        tiny = (rng.standard_normal((k, k)) + 1j * rng.standard_normal((k, k))) * 2.0**-135
        mats.append(g + tiny + np.conj(tiny.T))
    g = np.stack(mats)
    g32 = g.astype(np.complex64)
    err = np.array([float(np.linalg.norm(g32[i].astype(np.complex128) - g[i], 2)) * 1.01 for i in range(2)])
    ok, bound = stack_sv32.cholesky32_below(g32, err, scale)
    lam = np.linalg.eigvalsh(g)[:, -1]
    assert list(ok) == [True, False] and lam[0] <= bound[0] <= scale


def _force_kernel32(monkeypatch, on: bool = True) -> dict[str, int]:
    """The autocorrelation path, with (or without) its float32 tier on shapes the cost model leaves to float64;
    returns the counts of the last tiered call (so a test fails if the tier silently never runs)."""
    monkeypatch.setattr(conv_fft, "gram_kernel_cost", lambda shape, f: (1.0, 0.0))
    monkeypatch.setattr(conv_fft, "kernel32_fits", lambda shape, f: on)
    counts: dict[str, int] = {}
    orig = gram_kernel32.kernel32_gram_bound

    def counting(*args):
        res = orig(*args)
        if res is not None:
            counts.update(res[1])
        return res

    monkeypatch.setattr(conv_fft, "kernel32_gram_bound", counting)
    return counts


@pytest.mark.parametrize(
    ("shape", "s", "n", "groups"),
    [
        ((40, 32, 3, 3), 1, 7, 1),
        ((32, 48, 3, 3), 2, 8, 1),  # strided: polyphase, 192 phase channels
        ((80, 40, 3, 3), 1, 5, 2),  # grouped
        ((36, 30, 5), 1, 12, 1),  # 1-D
        ((26, 26, 3, 3, 3), 1, 4, 1),  # 3-D
    ],
)
def test_layer_bound_covers_the_exact_norm_with_the_float32_tier(monkeypatch, shape, s, n, groups):
    rng = np.random.default_rng(sum(shape) + n)
    w = (rng.standard_normal(shape) / 10).astype(np.float32)
    if groups == 2:
        w[40:] *= 1.3  # the second group holds the maximum
    d = w.ndim - 2
    pad = shape[-1] // 2
    args = (w, groups, (s,) * d, (1,) * d, (pad,) * d, (pad,) * d, (n,) * d)
    counts = _force_kernel32(monkeypatch)
    tiered = conv_circulant_bound(*args)
    assert tiered.method.endswith("Gram kernel, float32 tier") and counts["float32"] > 0
    _force_kernel32(monkeypatch, on=False)
    plain = conv_circulant_bound(*args)
    assert plain.method.endswith("Gram kernel")
    cg = shape[0] // groups
    circ = max(_circulant_exact(w[cg * i : cg * (i + 1)].astype(np.float64), s, n, pad) for i in range(groups))
    assert circ <= tiered.value <= circ * TIGHT
    assert abs(tiered.value / plain.value - 1) <= stack_sv.CHOLESKY_TOL
    exact = exact_norm("Conv", w, (1, shape[1] * groups) + (n,) * d, pads=[pad] * 2 * d, strides=[s] * d, group=groups)
    assert exact * (1 - 1e-9) <= tiered.value


_TIE_GRID = (8, 8)  # circulant_grid of a 3 x 3 conv, pad 1, on a 7 x 7 input


def _tie_lams(w: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(_exact_grams(phase_kernel(w, 1, (1, 1), (1, 1)), _TIE_GRID))[:, -1].reshape(_TIE_GRID)


def _near_tie_kernel(rel: float) -> np.ndarray:
    """A 3 x 3 kernel whose middle column of taps (second spatial axis) is zero: its symbol has period pi along
    that axis, so the frequencies (u, v) and (u, v + 4) of the 8 x 8 grid have the same singular values; the
    maximum is taken where those two are not conjugates of each other. Then the middle column is set to
    ``rel`` times the first: the two frequencies tie to about ``rel``."""
    for seed in range(50):
        w = np.random.default_rng(seed).standard_normal((36, 36, 3, 3)) / 10
        w[:, :, :, 1] = 0.0
        u, v = np.unravel_index(int(np.argmax(_tie_lams(w))), _TIE_GRID)
        if not (u % 4 == 0 and v % 4 == 2):
            break
    w[:, :, :, 1] = rel * w[:, :, :, 0]
    return w


@pytest.mark.parametrize("rel", [1e-6, 0.0])
def test_near_tie_between_frequencies_is_still_covered(monkeypatch, rel):
    w = _near_tie_kernel(rel)
    lam = _tie_lams(w)
    u, v = np.unravel_index(int(np.argmax(lam)), lam.shape)
    other = lam[u, (v + 4) % 8]
    assert not (u % 4 == 0 and v % 4 == 2)  # (u, v + 4) is another frequency, not the conjugate
    assert 0 <= 1 - other / lam[u, v] <= 2e-6 and (rel == 0 or other != lam[u, v])  # the near-miss
    counts = _force_kernel32(monkeypatch)
    nb = conv_circulant_bound(w, 1, (1, 1), (1, 1), (1, 1), (1, 1), (7, 7))
    assert nb.method.endswith("N=8x8, Gram kernel, float32 tier") and counts["float64"] >= 2  # both ties: float64
    assert counts["float32"] > 0
    circ = _circulant_exact(w, 1, 7, 1)
    assert circ <= nb.value <= circ * TIGHT


def test_a_misranked_maximum_fails_in_float32_and_is_covered_in_float64(monkeypatch):
    """Estimates that rank the true maximum last: it meets the float32 Cholesky against the too-low float64
    value of the second frequency, must fail there, and the float64 fallback must cover it."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((40, 40, 3, 3)) / 10

    def misranked(gram, steps):  # noqa: ANN001, ANN202
        lam = np.linalg.eigvalsh(gram.astype(np.complex128))[:, -1]
        lam[np.argmax(lam)] = 0.5 * lam.min()
        return lam

    counts = _force_kernel32(monkeypatch)
    monkeypatch.setattr(conv_tiers, "lanczos_top", misranked)
    nb = conv_circulant_bound(w, 1, (1, 1), (1, 1), (1, 1), (1, 1), (5, 5))
    circ = _circulant_exact(w, 1, 5, 1)
    assert counts["float64"] >= 2 and counts["float32"] > 0
    assert circ <= nb.value <= circ * TIGHT


@pytest.mark.parametrize("bad", [np.nan, np.inf, 2.0**41])
def test_out_of_range_weights_leave_float32_to_the_float64_path(monkeypatch, bad):
    w = np.random.default_rng(1).standard_normal((30, 30, 3, 3)) / 10
    w[0, 0, 1, 1] = bad
    pk = drop_zero_lines(phase_kernel(w, 1, (1, 1), (1, 1)))
    assert gram_kernel32.gram_kernel32(pk) is None
    if math.isfinite(bad):
        counts = _force_kernel32(monkeypatch)
        nb = conv_circulant_bound(w, 1, (1, 1), (1, 1), (1, 1), (1, 1), (5, 5))
        assert nb.method.endswith("Gram kernel") and not counts  # the float64 path ran
        assert _circulant_exact(w, 1, 5, 1) <= nb.value


def test_the_cost_model_chooses_the_tier_where_it_pays():
    """The ResNet-18 shapes: the 256-channel 3 x 3 layers on a 7 x 7 input (41 frequencies) take the tier;
    64-channel layers, and the strided 2 x 2 phase kernels (cut into inner blocks) stay in float64."""
    assert gram_kernel32.kernel32_fits((1, 256, 256, 3, 3), 41)
    assert not gram_kernel32.kernel32_fits((1, 64, 64, 3, 3), 545)
    assert not gram_kernel32.kernel32_fits((1, 512, 1024, 2, 2), 13)
    assert not gram_kernel32.kernel32_fits((1, 256, 256, 3, 3), 2)  # too few frequencies to rank


def test_dispatch_takes_the_tier_on_a_resnet_shaped_layer():
    """Without any monkeypatching: a 256-channel 3 x 3 conv on a 7 x 7 input is bounded by the float32 tier
    and covers the exact circulant value."""
    rng = np.random.default_rng(17)
    w = (rng.standard_normal((256, 256, 3, 3)) / 30).astype(np.float32)
    nb = conv_circulant_bound(w, 1, (1, 1), (1, 1), (1, 1), (1, 1), (7, 7))
    assert nb.method.endswith("Gram kernel, float32 tier")
    circ = _circulant_exact(w.astype(np.float64), 1, 7, 1)
    assert circ <= nb.value <= circ * TIGHT
