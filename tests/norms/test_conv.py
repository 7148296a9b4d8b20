"""lipgraph.norms.conv against exact dense norms (onnxruntime basis-vector oracle, SPEC sec. 9)."""

from __future__ import annotations

import numpy as np
import pytest

from lipgraph.norms.conv import (
    ConvGeometry,
    circulant_grid,
    circular_norm_same_grid,
    conv_circulant_bound,
    conv_dense_bound,
    conv_lmt_bound,
    conv_power_lower,
    output_size,
    phase_kernel,
    resolve_pads,
)
from tests.rules.conv_oracle import dense_matrix, exact_norm

TOL = 1e-9


# ---------------------------------------------------------------- pads


@pytest.mark.parametrize(
    ("n", "k", "s", "dil", "mode"),
    [
        (5, 2, 1, 1, "SAME_UPPER"),
        (5, 2, 1, 1, "SAME_LOWER"),
        (6, 4, 1, 1, "SAME_UPPER"),
        (6, 4, 1, 1, "SAME_LOWER"),
        (7, 3, 2, 1, "SAME_UPPER"),
        (8, 4, 3, 1, "SAME_LOWER"),
        (4, 1, 2, 1, "SAME_UPPER"),  # the spec's pad formula is negative here: clamped to 0
        (9, 5, 2, 1, "VALID"),
    ],
)
def test_resolve_pads_matches_onnxruntime_output_shape(n, k, s, dil, mode):
    """Pads from resolve_pads give the output size onnxruntime produces, and the same operator."""
    rng = np.random.default_rng(n * 100 + k * 10 + s)
    w = rng.standard_normal((2, 1, k)).astype(np.float32)
    a, out_shape = dense_matrix("Conv", w, (1, 1, n), strides=[s], dilations=[dil], auto_pad=mode)
    (pb,), (pe,) = resolve_pads([n], [k], [s], [dil], None, mode)
    assert out_shape[1] == output_size(n, k, s, dil, pb, pe)
    geo = ConvGeometry((n,), (s,), (dil,), (pb,), (pe,))
    from lipgraph.norms.conv import conv_dense_matrix

    mine = conv_dense_matrix(w.astype(np.float64), geo)
    # Our rows are (channel, position) like onnxruntime's output layout.
    np.testing.assert_allclose(mine, a, atol=1e-6)


def test_resolve_pads_explicit_layout_and_negative():
    assert resolve_pads([5, 6], [3, 3], None, None, [1, 2, 3, 4], "NOTSET") == ((1, 2), (3, 4))
    assert resolve_pads([5, 6], [3, 3], None, None, None, b"NOTSET") == ((0, 0), (0, 0))
    with pytest.raises(ValueError):
        resolve_pads([5], [3], None, None, [-1, 0], "NOTSET")
    with pytest.raises(ValueError):
        resolve_pads([None], [3], None, None, None, "SAME_UPPER")


# ---------------------------------------------------------------- negative control


def test_same_grid_circular_norm_is_not_a_bound():
    """SPEC sec. 4: kernel [1, -1], n = 3, pad 1: circular on N = n is 1.732 < 1.848 = true norm.

    The helper that computes it is below the exact norm; lipgraph's circulant bound (on the safe,
    larger grid) is above it. So the code does not rely on the same-grid value.
    """
    w = np.array([[[1.0, -1.0]]], dtype=np.float32)
    exact = exact_norm("Conv", w, (1, 1, 3), pads=[1, 1])
    same_grid = circular_norm_same_grid(w, [3])
    assert same_grid == pytest.approx(np.sqrt(3.0), rel=1e-12)
    assert exact == pytest.approx(1.8477590650225735, rel=1e-6)  # 2 cos(pi/8)
    assert same_grid < exact * 0.95
    nb = conv_circulant_bound(w, 1, [1], [1], [1], [1], [3])
    assert nb.value >= exact * (1 - TOL)
    assert circulant_grid(ConvGeometry((3,), (1,), (1,), (1,), (1,)), [2]) == (4,)
    with pytest.raises(ValueError):  # a grid below the safe one is refused
        conv_circulant_bound(w, 1, [1], [1], [1], [1], [3], grid=[3])


# ---------------------------------------------------------------- polyphase rewrite


def test_phase_kernel_is_an_exact_rewrite():
    """Strided conv == stride-1 conv of the polyphase kernel on the space-to-depth input."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 2, 5, 4))
    s, dil, n = (2, 3), (2, 1), (11, 9)
    geo = ConvGeometry(n, s, dil, (0, 0), (0, 0))
    from lipgraph.norms.conv import _conv_apply, _grouped

    x = rng.standard_normal((1, 2, 1) + n)
    y = _conv_apply(_grouped(w, 1), geo, x)
    pk = phase_kernel(w, 1, s, dil)  # (1, 3, 2*6, Q1, Q2)
    # Space-to-depth of x (padded with zeros to a multiple of s): channel (c, r1, r2), positions m.
    m = [-(-nn // st) + pk.shape[3 + i] for i, (nn, st) in enumerate(zip(n, s, strict=True))]
    xs = np.zeros((2, s[0], s[1], m[0], m[1]))
    for r1 in range(s[0]):
        for r2 in range(s[1]):
            part = x[0, :, 0, r1 :: s[0], r2 :: s[1]]
            xs[:, r1, r2, : part.shape[1], : part.shape[2]] = part
    xs = xs.reshape(1, 2 * s[0] * s[1], 1, m[0], m[1])
    geo1 = ConvGeometry(tuple(m), (1, 1), (1, 1), (0, 0), (0, 0))
    y1 = _conv_apply(pk, geo1, xs)
    np.testing.assert_allclose(y1[..., : y.shape[3], : y.shape[4]], y, atol=1e-12)


# ---------------------------------------------------------------- bounds vs oracle (1-D, fast, many)

CASES_1D = [
    # (n, k, s, dil, pb, pe, groups, cin/g, cout/g)
    (n, k, s, dil, pb, pe, g, 2, 2)
    for n, k, s, dil, pb, pe, g in [
        (3, 2, 1, 1, 1, 1, 1),
        (1, 3, 1, 1, 1, 1, 1),
        (3, 5, 1, 1, 2, 2, 2),
        (7, 4, 2, 1, 1, 2, 1),
        (8, 3, 3, 1, 0, 2, 1),
        (12, 5, 2, 2, 3, 1, 3),
        (6, 2, 3, 3, 2, 0, 1),
        (10, 1, 2, 1, 0, 0, 2),
        (5, 5, 1, 1, 0, 0, 1),
        (9, 3, 1, 4, 4, 4, 1),
    ]
]


@pytest.mark.parametrize(("n", "k", "s", "dil", "pb", "pe", "g", "cg", "mg"), CASES_1D)
def test_bounds_at_least_exact_1d(n, k, s, dil, pb, pe, g, cg, mg):
    rng = np.random.default_rng(n + 17 * k + 5 * s)
    w = rng.standard_normal((g * mg, cg, k)).astype(np.float32)
    exact = exact_norm("Conv", w, (1, g * cg, n), strides=[s], dilations=[dil], pads=[pb, pe], group=g)
    geo = ConvGeometry((n,), (s,), (dil,), (pb,), (pe,))
    circ = conv_circulant_bound(w, g, [s], [dil], [pb], [pe], [n])
    dense = conv_dense_bound(w, g, geo)
    lmt = conv_lmt_bound(w, g, [s], [dil])
    for nb in (circ, dense, lmt):
        assert nb.value >= exact * (1 - TOL), nb
    assert dense.value <= exact * (1 + 1e-6)
    assert conv_power_lower(w, g, geo) <= exact * (1 + 1e-6)


def test_gram_eig_path_is_sound_and_tight():
    """Wide channel counts use the Gram/eigenvalue path; compare with the dense oracle."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((128, 100, 3)).astype(np.float32)
    exact = exact_norm("Conv", w, (1, 100, 4), pads=[1, 1])
    circ = conv_circulant_bound(w, 1, [1], [1], [1], [1], [4])
    assert exact * (1 - TOL) <= circ.value <= exact * 1.10


@pytest.mark.parametrize("seed", range(4))
def test_lmt_may_beat_decides_against_the_exact_lmt_value(seed):
    """The LMT screen stops early, but it must still say "may beat" for any value above
    sqrt(overlap) ||W_mat|| (exact SVD), and "cannot" for one clearly below it."""
    import math

    from lipgraph.norms.conv import _lmt_may_beat
    from lipgraph.norms.conv_geometry import ConvGeometry

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 8, 3, 3))
    w[0] *= 1 + 2 * seed  # some kernels with one dominant output channel
    geo = ConvGeometry((8, 8), (1, 1), (1, 1), (1, 1), (1, 1))
    lmt = 3.0 * float(np.linalg.svd(w.reshape(16, -1), compute_uv=False)[0])  # overlap 9 for 3 x 3, stride 1
    assert _lmt_may_beat(w, 1, geo, lmt * (1 + 1e-6))
    assert _lmt_may_beat(w, 1, geo, math.inf)
    assert not _lmt_may_beat(w, 1, geo, lmt * 0.5)
    assert not _lmt_may_beat(w, 1, geo, 0.0)
