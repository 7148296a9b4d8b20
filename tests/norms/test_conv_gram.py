"""Gram matrices of conv symbols from the kernel's autocorrelation (lipgraph.norms.conv_gram), the
frequency floor of the certificate, and the dropping of zero phase-kernel lines, against float64 oracles:
symbols by numpy's FFT (an independent DFT), the exact SVD of every symbol, and the exact norm of the
op's dense matrix run through onnxruntime."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from lipgraph.norms import conv_fft, conv_gram, stack_sv
from lipgraph.norms.conv import ConvGeometry, circulant_grid, conv_circulant_bound, phase_kernel
from tests.rules.conv_oracle import dense_matrix

TIGHT = math.sqrt(1 + stack_sv.CHOLESKY_TOL) * (1 + 1e-9)


def exact_norm(op: str, weight: np.ndarray, in_shape: tuple[int, ...], **attrs) -> float:
    """The op's exact norm from its dense matrix run through onnxruntime (the largest eigenvalue of its
    float64 Gram matrix: the same value as the SVD's to ~1e-13, in a fraction of the time)."""
    a, _ = dense_matrix(op, weight, in_shape, **attrs)
    small = a if a.shape[0] <= a.shape[1] else a.T
    return math.sqrt(float(np.linalg.eigvalsh(small @ small.T)[-1]))


def _fft_symbols(pk: np.ndarray, grid) -> np.ndarray:
    """Every symbol on the grid, (g * prod(grid), mg, cp), by numpy's FFT of the zero-padded phase kernel."""
    d = pk.ndim - 3
    sym = np.fft.fftn(pk, s=tuple(grid), axes=tuple(range(3, 3 + d)))
    g, mg, cp = pk.shape[:3]
    return np.moveaxis(sym.reshape(g, mg, cp, -1), 3, 1).reshape(-1, mg, cp)


def _circulant_exact(w, s, n, pad) -> float:
    """The value the circulant bound estimates: max over the grid of the exact top singular value."""
    d = w.ndim - 2
    pk = phase_kernel(w, 1, (s,) * d, (1,) * d)
    geo = ConvGeometry((n,) * d, (s,) * d, (1,) * d, (pad,) * d, (pad,) * d)
    grid = circulant_grid(geo, w.shape[2:])
    return float(np.linalg.svd(_fft_symbols(pk, grid), compute_uv=False)[:, 0].max())


@pytest.mark.parametrize(
    ("shape", "grid"),
    [
        ((2, 30, 40, 3, 3), (6, 7)),  # fewer outputs: A A^H, two groups
        ((1, 40, 27, 3, 3), (7, 5)),  # fewer inputs: A^H A (its conjugate)
        ((1, 26, 33, 4), (9,)),  # 1-D, even tap count
        ((1, 25, 25, 2, 3, 2), (4, 5, 3)),  # 3-D
    ],
)
def test_gram_symbols_match_the_fft_oracle_within_the_allowance(shape, grid):
    rng = np.random.default_rng(sum(shape))
    pk = rng.standard_normal(shape) * rng.uniform(0.1, 10.0, size=shape[:3] + (1,) * (len(shape) - 3))
    gk = conv_gram.gram_kernel(pk)
    err = conv_gram.gram_kernel_allowance(gk)
    freqs = np.indices(grid).reshape(len(grid), -1).T  # every frequency, in fftn's order
    got = np.concatenate(list(conv_gram.gram_symbols(gk, freqs, grid)))  # group-major per chunk
    sym = _fft_symbols(pk, grid)
    g = shape[0]
    f = freqs.shape[0]
    sym = sym.reshape(g, f, *sym.shape[1:]).reshape(g * f, *sym.shape[1:])
    want = sym @ np.conj(np.swapaxes(sym, 1, 2)) if shape[1] <= shape[2] else np.conj(np.swapaxes(sym, 1, 2)) @ sym
    # The Gram kernel gives the conjugate of A^H A: compare the spectra (Weyl: within err + the oracle's rounding).
    ev_got = np.linalg.eigvalsh(got)
    ev_want = np.linalg.eigvalsh(want)
    scale = float(ev_want.max())
    assert np.abs(ev_got - ev_want).max() <= err + 1e-12 * scale
    assert 0 < err < 1e-9 * scale  # an allowance, not a blanket


def test_gram_symbols_of_a_wrong_offset_table_are_caught():
    """The oracle comparison can fail: shifting the offsets by one tap changes the spectra."""
    rng = np.random.default_rng(3)
    pk = rng.standard_normal((1, 30, 30, 3, 3))
    gk = conv_gram.gram_kernel(pk)
    bad = conv_gram.GramKernel(gk.r, gk.deltas + np.array([1, 0]), gk.s_fro2, gk.inner, gk.taps)
    grid = (6, 6)
    freqs = np.indices(grid).reshape(2, -1).T
    sym = _fft_symbols(pk, grid)
    want = np.linalg.eigvalsh(sym @ np.conj(np.swapaxes(sym, 1, 2)))
    got = np.linalg.eigvalsh(np.concatenate(list(conv_gram.gram_symbols(bad, freqs, grid))))
    assert np.abs(got - want).max() > 1e3 * conv_gram.gram_kernel_allowance(gk)


def _force(monkeypatch, path: str) -> None:
    costs = (1.0, 0.0) if path == "kernel" else (0.0, 1.0)
    monkeypatch.setattr(conv_fft, "gram_kernel_cost", lambda shape, f: costs)


@pytest.mark.parametrize(
    ("w_shape", "s", "n"),
    [
        ((40, 32, 3, 3), 1, 7),
        ((32, 48, 3, 3), 2, 8),  # polyphase: 192 phase channels
        ((36, 30, 5), 1, 12),  # 1-D
        ((26, 26, 3, 3, 3), 1, 4),  # 3-D
    ],
)
def test_gram_kernel_path_bounds_the_exact_norm_and_matches_the_direct_path(monkeypatch, w_shape, s, n):
    rng = np.random.default_rng(n * 31 + s)
    w = (rng.standard_normal(w_shape) / 10).astype(np.float32)
    d = w.ndim - 2
    pad = w_shape[-1] // 2
    args = (w, 1, (s,) * d, (1,) * d, (pad,) * d, (pad,) * d, (n,) * d)
    _force(monkeypatch, "kernel")
    kernel = conv_circulant_bound(*args)
    assert kernel.method.endswith("Gram kernel")
    _force(monkeypatch, "direct")
    direct = conv_circulant_bound(*args)
    assert "Gram kernel" not in direct.method
    circ = _circulant_exact(w.astype(np.float64), s, n, pad)
    assert circ <= kernel.value <= circ * TIGHT
    assert abs(kernel.value / direct.value - 1) <= stack_sv.CHOLESKY_TOL
    exact = exact_norm("Conv", w, (1, w_shape[1]) + (n,) * d, pads=[pad] * 2 * d, strides=[s] * d)
    assert exact * (1 - 1e-9) <= kernel.value


def test_grouped_conv_on_the_gram_kernel_path(monkeypatch):
    rng = np.random.default_rng(9)
    w = (rng.standard_normal((56, 28, 3, 3)) / 10).astype(np.float32)
    _force(monkeypatch, "kernel")
    nb = conv_circulant_bound(w, 2, (1, 1), (1, 1), (1, 1), (1, 1), (5, 5))
    exact = exact_norm("Conv", w, (1, 56, 5, 5), pads=[1, 1, 1, 1], group=2)
    per_group = max(_circulant_exact(w[28 * i : 28 * (i + 1)].astype(np.float64), 1, 5, 1) for i in range(2))
    assert exact * (1 - 1e-9) <= nb.value and per_group <= nb.value <= per_group * TIGHT


def test_floor_near_the_maximum_falls_back_instead_of_returning_the_floor():
    """A floor just below the true maximum: that frequency's certificate must fail and the result must
    still cover it (never the floor's value); a floor above everything is returned (plus slack)."""
    rng = np.random.default_rng(21)
    a = rng.standard_normal((12, 40, 50)) + 1j * rng.standard_normal((12, 40, 50))
    a[5] *= 1.02
    gram, err = stack_sv.gram_stack(a)
    lam = float((np.linalg.svd(a, compute_uv=False)[:, 0] ** 2).max())
    for below in (1 - 1e-6, 0.999, 0.9):
        got = stack_sv.certify_gram_stack(gram, err, floor=lam * below)
        assert lam <= got <= lam * (1 + stack_sv.CHOLESKY_TOL) * (1 + 1e-9)
    above = stack_sv.certify_gram_stack(gram, err, floor=lam * 1.01)
    assert lam * 1.01 <= above <= lam * 1.01 * (1 + 1e-9)
    # Through top_sv_stack's floor (a singular value) too.
    assert math.sqrt(lam) <= stack_sv.top_sv_stack(a, floor=math.sqrt(lam) * 0.999)


def test_trial_value_below_every_frequency_still_sound():
    """tol = 0 and near-equal frequencies: the first trial value is rejected by several matrices."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((30, 32, 32)) + 1j * rng.standard_normal((30, 32, 32))
    exact = float(np.linalg.svd(a, compute_uv=False)[:, 0].max())
    assert exact <= stack_sv.top_sv_stack(a, tol=0.0) <= exact * (1 + 1e-9)


@pytest.mark.parametrize("zero_channel", [False, True])
def test_zero_lines_are_dropped_exactly(zero_channel):
    """A 1x1 stride-2 conv (its phase kernel is 3/4 zero columns) and a dead input channel: the bound is
    the exact norm, which onnxruntime's dense matrix confirms."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((40, 30, 1, 1)) / 5).astype(np.float32)
    if zero_channel:
        w[:, 7] = 0.0
    pk = phase_kernel(w.astype(np.float64), 1, (2, 2), (1, 1))
    assert conv_gram.drop_zero_lines(pk).shape[2] == (29 if zero_channel else 30)
    nb = conv_circulant_bound(w, 1, (2, 2), (1, 1), (0, 0), (0, 0), (6, 6))
    exact = exact_norm("Conv", w, (1, 30, 6, 6), strides=[2, 2])
    assert exact * (1 - 1e-9) <= nb.value <= exact * TIGHT * (1 + 1e-6)
    zero = conv_gram.drop_zero_lines(np.zeros((1, 3, 4, 2, 2)))
    assert zero.shape[1:3] == (1, 1) and not zero.any()


def test_exported_conv_net_bound_covers_the_onnxruntime_norm(tmp_path):
    """A real exported 40-channel conv (legacy and dynamo exporters) analyzed end to end takes the Gram
    kernel path (by cost); its bound is at least the exact norm of the same conv's dense matrix run
    through onnxruntime, and within the tolerance of the circulant value."""
    torch = pytest.importorskip("torch")
    import onnx

    import lipgraph

    torch.manual_seed(0)
    net = torch.nn.Conv2d(40, 40, 3, padding=1).eval()
    w = net.weight.detach().numpy()
    exact = exact_norm("Conv", w, (1, 40, 8, 8), pads=[1, 1, 1, 1])
    circ = _circulant_exact(w.astype(np.float64), 1, 8, 1)
    for dynamo in (False, True):
        path = tmp_path / f"conv_{dynamo}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.randn(1, 40, 8, 8),), str(path), dynamo=dynamo, input_names=["x"])
        res = lipgraph.analyze(onnx.load(str(path)))
        conv_rows = [n for n in res.nodes if n.op_type == "Conv"]
        assert len(conv_rows) == 1 and conv_rows[0].method.endswith("Gram kernel"), conv_rows
        assert exact * (1 - 1e-6) <= res.bound <= circ * TIGHT * (1 + 1e-6)


@pytest.mark.parametrize("complex_", [True, False])
def test_in_place_cholesky_stack_rejects_near_misses_and_reads_one_triangle(complex_):
    """The batched in-place certificate: accepts mu just above lambda_max, rejects mu just below, and
    depends only on the lower triangle (garbage in the upper one changes nothing)."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((5, 30, 40))
    if complex_:
        a = a + 1j * rng.standard_normal((5, 30, 40))
    g = a @ np.conj(np.swapaxes(a, 1, 2))
    lam = np.linalg.eigvalsh(g)[:, -1]
    top = float(lam.max())
    for rel, want in ((1 + 1e-7, [True] * 5), (1 - 1e-7, list(lam < top * (1 - 1e-7)))):
        ok, slack = stack_sv._cholesky_stack(g, np.arange(5), top * rel)
        assert list(ok) == want
        assert np.all(slack[ok] < 1e-9 * top) and np.all(np.isinf(slack[~ok]))
    iu = np.triu_indices(30, 1)
    messy = g.copy()
    messy[:, iu[0], iu[1]] = 1e6  # not Hermitian any more: only the lower triangle may be read
    ok_messy, _ = stack_sv._cholesky_stack(messy, np.arange(5), top * (1 + 1e-7))
    assert ok_messy.all()
    ok_sub, _ = stack_sv._cholesky_stack(g, np.array([int(np.argmax(lam))]), top * (1 - 1e-7))
    assert not ok_sub.any()  # a subset (the copy path) rejects the maximum just the same


def test_paired_dft_matches_the_plain_one_and_asymmetric_tables_take_the_plain_one(monkeypatch):
    """The DFT that pairs each offset with its negation gives the plain D-term DFT's matrices (to rounding, far
    inside the allowance); a table without that symmetry is not paired."""
    rng = np.random.default_rng(5)
    pk = rng.standard_normal((2, 24, 30, 3, 2))
    gk = conv_gram.gram_kernel(pk)
    assert conv_gram._paired_offsets(gk.deltas) is not None
    assert conv_gram._paired_offsets(gk.deltas + np.array([1, 0])) is None
    assert conv_gram._paired_offsets(gk.deltas[1:]) is None
    grid = (7, 5)
    freqs = np.indices(grid).reshape(2, -1).T
    paired = np.concatenate(list(conv_gram.gram_symbols(gk, freqs, grid)))
    monkeypatch.setattr(conv_gram, "_paired_offsets", lambda deltas: None)
    plain = np.concatenate(list(conv_gram.gram_symbols(gk, freqs, grid)))
    err = conv_gram.gram_kernel_allowance(gk)
    assert 0 < np.abs(paired - plain).max() <= 1e-3 * err  # two computations, the same matrices to rounding
    assert np.abs(paired - np.conj(np.swapaxes(paired, 1, 2))).max() <= 1e-3 * err  # Hermitian to rounding
