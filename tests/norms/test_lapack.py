"""Batched in-place Cholesky (lipgraph.norms.lapack): every backend against numpy/eigvalsh oracles.

Each backend (ctypes into numpy's OpenBLAS, numpy's ``cholesky_lo`` gufunc, scipy.linalg.lapack) runs on
the same stacks: the pass/fail decision must match the float64 eigenvalues (margins far above rounding),
the factors must agree with numpy's ``cholesky`` to 1e-12 (float64), and a NaN or infinite entry in the
triangle read, or a matrix that is not positive definite, must be reported failed (OpenBLAS's potrf itself
returns ``info = 0`` on NaN pivots).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from lipgraph.norms import lapack, stack_sv, stack_sv32

BACKENDS = ["ctypes-scipy", "ctypes-numpy", "numpy", "scipy"]
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


@pytest.fixture(params=BACKENDS)
def backend(request):
    name = lapack.use_backend(request.param)
    if name is None:
        pytest.skip(f"backend {request.param} not available here")
    yield request.param
    lapack.use_backend(None)


def _hermitian(rng, k, dtype, lam_min):
    """A random Hermitian matrix with eigenvalues in [lam_min, lam_min + 3] (exact spectrum known)."""
    cplx = np.dtype(dtype).kind == "c"
    a = rng.standard_normal((k, k)) + (1j * rng.standard_normal((k, k)) if cplx else 0)
    q, _ = np.linalg.qr(a)
    eig = lam_min + 3.0 * rng.random(k)
    eig[0] = lam_min
    return (q * eig) @ np.conj(q.T)


def _stack(rng, dtype, k=40):
    # pass, fail (clearly negative), pass, fail by a margin far above rounding, pass (ill-conditioned)
    single = np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.complex64))
    margin = 1e-2 if single else 1e-6
    mats = [_hermitian(rng, k, dtype, lam) for lam in (1.0, -0.5, 0.3, -margin, 10 * margin)]
    return np.stack(mats).astype(dtype), np.array([True, False, True, False, True])


def test_ctypes_backend_found_on_numpy_openblas():
    """numpy 2.x wheels ship scipy_openblas64: the scipy-free path must be found and verified there, with the
    integer width its configuration states; the default tries scipy's bundled copy first, then numpy's."""
    cfg = np.show_config(mode="dicts")["Build Dependencies"]["lapack"]
    if "openblas" not in str(cfg.get("name", "")).lower():
        pytest.skip("numpy is not built against OpenBLAS here")
    name = lapack.use_backend("ctypes-numpy")
    lapack.use_backend(None)
    assert name is not None and name.startswith("ctypes numpy: ")
    assert ("ILP64" in name) == ("USE64BITINT" in str(cfg.get("openblas configuration", "")))
    want = lapack.use_backend("ctypes-scipy") or name
    lapack.use_backend(None)
    assert lapack.backend_name() == want


@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_matches_oracle(backend, dtype):
    rng = np.random.default_rng(3)
    h, want = _stack(rng, dtype)
    orig = h.copy()
    ok = lapack.cholesky_inplace(h, clean=True)
    assert ok.tolist() == want.tolist()
    assert lapack.backend_used() == lapack.backend_name()
    tol = 1e-5 if np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.complex64)) else 1e-12
    for i in np.flatnonzero(want):
        ref = np.linalg.cholesky(orig[i].astype(np.complex128 if np.iscomplexobj(orig) else np.float64))
        assert np.abs(h[i] - ref).max() <= tol * np.abs(ref).max()
        assert np.array_equal(np.triu(h[i], 1), np.zeros_like(h[i]))  # clean: strict upper zeroed
        assert np.allclose(h[i] @ np.conj(h[i].T), orig[i], atol=10 * tol * np.abs(orig[i]).max())


def test_backends_agree_on_one_stack():
    rng = np.random.default_rng(5)
    h, want = _stack(rng, np.complex128, k=70)
    results = {}
    for name in BACKENDS:
        if lapack.use_backend(name) is None:
            continue
        work = h.copy()
        results[name] = (lapack.cholesky_inplace(work, clean=True), work)
    lapack.use_backend(None)
    assert len(results) >= 2
    ref_ok, ref_l = results.pop(next(iter(results)))
    assert ref_ok.tolist() == want.tolist()
    for ok, fac in results.values():
        assert ok.tolist() == ref_ok.tolist()
        for i in np.flatnonzero(ok):
            assert np.abs(fac[i] - ref_l[i]).max() <= 1e-12 * np.abs(ref_l[i]).max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("where", "value", "passes"),
    [
        ((7, 3), np.nan, False),  # lower triangle (read): NaN pivot, OpenBLAS says info = 0
        ((3, 7), np.nan, True),  # strict upper triangle: never read
        ((5, 5), np.nan, False),
        ((7, 3), np.inf, False),
        ((5, 5), np.inf, False),  # an infinite pivot is not a completed factorisation either
        ((30, 29), -np.inf, False),
        ((30, 29), 1e300, False),  # its square overflows
    ],
)
def test_non_finite_entries_fail(backend, dtype, where, value, passes):
    rng = np.random.default_rng(11)
    good = _hermitian(rng, 32, np.complex128 if np.dtype(dtype).kind == "c" else np.float64, 1.0)
    h = np.stack([good, good, good]).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h[1][where] = value
        ok = lapack.cholesky_inplace(h)
    assert ok.tolist() == [True, passes, True]


def test_non_contiguous_stack_is_written_back(backend):
    rng = np.random.default_rng(2)
    base, want = _stack(rng, np.float64, k=20)
    big = np.zeros((10, 20, 20))
    big[::2] = base
    view = big[::2]  # not contiguous
    assert not view.flags.c_contiguous
    ok = lapack.cholesky_inplace(view, clean=True)
    assert ok.tolist() == want.tolist()
    for i in np.flatnonzero(want):
        assert np.allclose(big[2 * i], np.linalg.cholesky(base[i]), rtol=1e-12, atol=1e-12)
    # a transposed (Fortran-ordered) view of a symmetric stack: the lower triangle of the view is read
    tview = np.swapaxes(base.copy(), 1, 2)
    ok = lapack.cholesky_inplace(tview, clean=True)
    assert ok.tolist() == want.tolist()
    assert np.allclose(tview[0], np.linalg.cholesky(base[0].T), rtol=1e-12, atol=1e-12)


def test_edge_shapes_and_types(backend):
    assert lapack.cholesky_inplace(np.zeros((0, 5, 5))).shape == (0,)
    assert lapack.cholesky_inplace(np.zeros((3, 0, 0))).tolist() == [True] * 3
    one = np.array([[[4.0]], [[0.0]], [[-1.0]], [[5e-324]]])
    assert lapack.cholesky_inplace(one).tolist() == [True, False, False, True]
    assert one[0, 0, 0] == 2.0
    with pytest.raises(TypeError):
        lapack.cholesky_inplace(np.eye(3, dtype=np.int64)[None])
    with pytest.raises(ValueError):
        lapack.cholesky_inplace(np.zeros((2, 3, 4)))
    ro = np.eye(3)[None].copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        lapack.cholesky_inplace(ro)


def test_self_check_rejects_a_broken_backend():
    """A backend that reports success without factorising (or never fails) is never trusted."""

    def lazy(h):
        return np.zeros(h.shape[0], dtype=np.int64)

    def identity_factor(h):
        h[...] = np.eye(h.shape[1])
        return np.zeros(h.shape[0], dtype=np.int64)

    assert not lapack._self_check(lazy)
    assert not lapack._self_check(identity_factor)
    assert lapack._self_check(lapack._gufunc_backend()[0])


def test_certificate_rejects_nan_matrix_on_every_backend(backend):
    """stack_sv's certificate: a Gram matrix with a NaN entry is never certified (main accepted it)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 40, 50)) + 1j * rng.standard_normal((5, 40, 50))
    g, _ = stack_sv.gram_stack(a)
    mu = 1.01 * float(np.linalg.eigvalsh(g)[:, -1].max())
    g[2, 10, 3] = g[2, 3, 10] = np.nan
    ok, slack = stack_sv._cholesky_stack(g, np.arange(5), mu)
    assert ok.tolist() == [True, True, False, True, True]
    assert np.isinf(slack[2])
    ok, _ = stack_sv.cholesky_certifies(g[2], mu)
    assert not ok


def test_float32_factor_same_decisions_on_every_backend():
    rng = np.random.default_rng(4)
    re, im = rng.standard_normal((6, 48, 64)), rng.standard_normal((6, 48, 64))
    re[2] *= 1.5  # one frequency clearly above the others
    gram, err = stack_sv32.gram32(re, im)
    lam = np.linalg.eigvalsh(gram.astype(np.complex128))[:, -1]
    target = float(np.sort(lam)[-2]) * 1.05  # every frequency but one can be shown below it
    out = {}
    for name in BACKENDS:
        if lapack.use_backend(name) is None:
            continue
        out[name] = stack_sv32.cholesky32_below(gram, err, target)
    lapack.use_backend(None)
    first = next(iter(out.values()))
    assert first[0].sum() == 5 and not first[0][2]
    assert np.all(first[1][first[0]] >= lam[first[0]])  # sound against the eigenvalues of the float32 Gram
    for ok, bound in out.values():
        assert ok.tolist() == first[0].tolist()
        assert np.allclose(bound[ok], first[1][ok], rtol=1e-6)


def test_no_scipy_linalg_import():
    code = (
        "import sys, numpy as np\n"
        "from lipgraph.norms import lapack\n"
        "h = np.stack([np.eye(4) * 2, -np.eye(4)]).astype(np.complex128)\n"
        "assert lapack.cholesky_inplace(h).tolist() == [True, False]\n"
        "assert 'scipy' not in sys.modules, 'scipy was imported'\n"
        "print(lapack.backend_used())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ctypes ") or out.stdout.startswith("numpy")


def test_env_order_and_unknown_names(monkeypatch):
    monkeypatch.setenv("LIPGRAPH_POTRF", "bogus, numpy")
    lapack.use_backend(None)
    try:
        assert lapack.backend_name().startswith("numpy")
    finally:
        lapack.use_backend(None)


def _conv_model(channels: int):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((channels, channels, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_analysis_meta_names_the_backend_that_ran(backend):
    """The backend is visible in the analysis meta, and only when a factorisation ran in that analysis."""
    import lipgraph

    res = lipgraph.analyze(_conv_model(40))  # 40 channels: above the batched-SVD size, Cholesky runs
    assert res.meta["potrf_backend"] == lapack.backend_name()
    prefix = {"ctypes-scipy": "ctypes scipy", "ctypes-numpy": "ctypes numpy", "numpy": "numpy", "scipy": "scipy"}
    assert res.meta["potrf_backend"].startswith(prefix[backend])
    small = lipgraph.analyze(_conv_model(4))  # batched SVD only
    assert "potrf_backend" not in small.meta
