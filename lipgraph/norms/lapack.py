"""Batched in-place Cholesky factorisations (LAPACK ``potrf``) without importing ``scipy.linalg``.

The certificates of :mod:`lipgraph.norms.stack_sv` and :mod:`lipgraph.norms.stack_sv32` factorise one
matrix per frequency in place. ``scipy.linalg.lapack`` does that, but importing ``scipy.linalg`` costs
0.25-0.35 s (its package ``__init__`` pulls in most of scipy), a tenth of a CIFAR ResNet-18's analysis.
The OpenBLAS libraries that the numpy and scipy wheels ship hold the same LAPACK routines, so this module
calls them there directly.

Backends, in order of preference (the first that loads and passes its self-check is used):

1. ``ctypes``: ``?potrf`` of the OpenBLAS library bundled with scipy's wheel (loaded without importing
   scipy), else of the one numpy loaded (numpy 2.x wheels ship ``scipy_openblas64`` with symbols such as
   ``scipy_zpotrf_64_``); see :data:`CTYPES_PACKAGES` for the measured reason of the order. The symbol's
   suffix names its integer width (``64_``: ILP64); that width is checked against the library's own
   configuration string (``USE64BITINT``) and the routine is run once on a known stack (a matrix that
   must pass, compared with numpy's ``cholesky``, and one that must fail) before it is trusted.
2. ``numpy-gufunc``: numpy's own batched ``cholesky_lo`` gufunc (a copy per matrix, NaN for failures).
3. ``scipy``: ``scipy.linalg.lapack`` (imports ``scipy.linalg``).

All three run LAPACK's ``potrf`` (OpenBLAS's implementation), so the rounding model the certificates rest
on is the same: if the factorisation completes, ``R^H R = H + dH`` with ``|dH| <= gamma_{k+1} |R^H| |R|``
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, Thm 10.3), which holds for any order of
the inner products, so also for OpenBLAS's blocked and recursive variants.

Failure. OpenBLAS's ``potrf`` tests a pivot with ``ajj <= 0``, which is false for NaN: a matrix with NaN
entries "completes" with ``info = 0`` and a NaN factor. So a factorisation counts as passed only if
``info = 0`` *and* every diagonal entry of the factor is finite and positive. That is enough: an entry
``r_ij`` (``i < j``) that is NaN or infinite makes the pivot ``r_jj = sqrt(h_jj - sum_i |r_ij|^2)`` NaN
(or its radicand ``-inf``), whatever the order of the sum, since every term ``|r_ij|^2`` is nonnegative.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

# potrf routine letter per dtype.
_LETTER = {
    np.dtype(np.float32): "s",
    np.dtype(np.float64): "d",
    np.dtype(np.complex64): "c",
    np.dtype(np.complex128): "z",
}
# (symbol template, ILP64) candidates, most specific first: numpy 2.x's scipy_openblas64, then plain
# 64-bit-suffixed OpenBLAS builds, then 32-bit integer ones.
_SYMBOLS = (("scipy_{}_64_", True), ("{}_64_", True), ("{}64_", True), ("scipy_{}_", False), ("{}_", False))
_CONFIG = {
    "scipy_{}_64_": "scipy_openblas_get_config64_",
    "{}_64_": "openblas_get_config64_",
    "{}64_": "openblas_get_config64_",
    "scipy_{}_": "scipy_openblas_get_config",
    "{}_": "openblas_get_config",
}

# Whose bundled OpenBLAS the ctypes backend tries, in order. scipy's first: measured on this project's
# machine (one thread, the 3,149 factorisations of a CIFAR ResNet-18 certificate) its OpenBLAS 0.3.30 ``?potrf``
# took 0.51 s where numpy's 0.3.31 (ILP64) took 0.56 s (10-30% slower for k <= 256, equal at 512); loading
# it costs 1.3 ms and imports nothing of scipy. numpy's, already loaded, where scipy ships none. The order
# is only about speed: every library is verified and self-checked the same way.
CTYPES_PACKAGES = ("scipy", "numpy")

# (potrf over one C-contiguous stack in place -> info per matrix, name); resolved once, on first use.
_Factor = Callable[[np.ndarray], np.ndarray]
_backend: tuple[_Factor, str] | None = None
_used: str | None = None


def _bundled_openblas(package: str) -> list[Path]:
    """The OpenBLAS shared libraries a package's wheel ships beside itself, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    here = Path(next(iter(spec.submodule_search_locations))).resolve()
    found: list[Path] = []
    for folder in (here.parent / f"{package}.libs", here / ".dylibs"):  # Linux / macOS wheels
        if folder.is_dir():
            found += [p for p in sorted(folder.iterdir()) if "openblas" in p.name.lower() and ".so" in p.name]
            found += [p for p in sorted(folder.iterdir()) if "openblas" in p.name.lower() and p.suffix == ".dylib"]
    return found


def _ctypes_backend(packages: tuple[str, ...] = CTYPES_PACKAGES) -> tuple[_Factor, str] | None:
    """``potrf`` through ctypes from the first bundled OpenBLAS whose symbols, integer width and self-check
    pass, or None."""
    for package in packages:
        for path in _bundled_openblas(package):
            made = _ctypes_library(path)
            if made is not None and _self_check(made[0]):
                return made[0], f"ctypes {package}: {made[1]}"
    return None


def _ctypes_library(path: Path) -> tuple[_Factor, str] | None:
    try:
        lib = ctypes.CDLL(str(path))  # numpy's is already loaded: dlopen hands back the same copy
    except OSError:
        return None
    for template, ilp64 in _SYMBOLS:
        try:
            fns = {dt: getattr(lib, template.format(f"{c}potrf")) for dt, c in _LETTER.items()}
            get_config = getattr(lib, _CONFIG[template])
        except AttributeError:
            continue
        get_config.restype = ctypes.c_char_p
        get_config.argtypes = []
        config = (get_config() or b"").decode(errors="replace")
        if ("USE64BITINT" in config) != ilp64:  # the integer width must be the library's own
            continue
        factor = _ctypes_factor(fns, ctypes.c_int64 if ilp64 else ctypes.c_int32)
        return factor, f"{path.name} {template.format('?potrf')} ({'ILP64' if ilp64 else 'LP64'})"
    return None


def _ctypes_factor(fns: dict[np.dtype, ctypes._CFuncPtr], int_t: type) -> _Factor:
    ptr = ctypes.POINTER(int_t)
    for fn in fns.values():
        # uplo, n, a, lda, info, and the hidden length of the character argument (gfortran ABI)
        fn.argtypes = [ctypes.c_char_p, ptr, ctypes.c_void_p, ptr, ptr, ctypes.c_size_t]
        fn.restype = None

    def factor(h: np.ndarray) -> np.ndarray:
        f, k = h.shape[0], h.shape[1]
        fn = fns[h.dtype]
        n, info = int_t(k), int_t(0)
        lda = int_t(max(k, 1))
        base, step = h.ctypes.data, k * k * h.itemsize
        infos = np.zeros(f, dtype=np.int64)
        for j in range(f):
            info.value = 0
            # Column-major, LAPACK sees H^T; its upper triangle is H's lower one (the triangle we read).
            fn(b"U", ctypes.byref(n), ctypes.c_void_p(base + j * step), ctypes.byref(lda), ctypes.byref(info), 1)
            infos[j] = info.value
        return infos

    return factor


def _gufunc_backend() -> tuple[_Factor, str] | None:
    try:
        from numpy.linalg import _umath_linalg
    except ImportError:
        return None
    chol = getattr(_umath_linalg, "cholesky_lo", None)
    if chol is None:
        return None

    def factor(h: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):  # failed matrices come back as NaN (the check below sees them)
            out = chol(h)
        h[...] = out  # the lower factor, upper triangle zero
        return np.zeros(h.shape[0], dtype=np.int64)  # failures show as NaN pivots

    return factor, "numpy-gufunc cholesky_lo"


def _scipy_backend() -> tuple[_Factor, str] | None:
    try:
        from scipy.linalg import lapack
    except ImportError:
        return None
    fns = {dt: getattr(lapack, f"{c}potrf") for dt, c in _LETTER.items()}

    def factor(h: np.ndarray) -> np.ndarray:
        fn = fns[h.dtype]
        infos = np.zeros(h.shape[0], dtype=np.int64)
        for j in range(h.shape[0]):
            # The transposed view is Fortran-ordered: overwritten in place, its upper = H's lower triangle.
            _, infos[j] = fn(h[j].T, lower=0, overwrite_a=1, clean=0)
        return infos

    return factor, "scipy.linalg.lapack"


_MAKERS: dict[str, Callable[[], tuple[_Factor, str] | None]] = {
    "ctypes": _ctypes_backend,
    "ctypes-scipy": lambda: _ctypes_backend(("scipy",)),
    "ctypes-numpy": lambda: _ctypes_backend(("numpy",)),
    "numpy": _gufunc_backend,
    "scipy": _scipy_backend,
}


def _self_check(factor: _Factor) -> bool:
    """One known stack per dtype: an SPD matrix (factor compared with numpy's) and an indefinite one
    (must fail), so a wrong symbol, integer width or triangle convention is never trusted."""
    rng = np.random.default_rng(7)
    for dt in _LETTER:
        a = rng.standard_normal((5, 5)) + (1j * rng.standard_normal((5, 5)) if dt.kind == "c" else 0)
        spd = a @ np.conj(a.T) + 5 * np.eye(5)
        bad = spd.copy()
        bad[3, 3] = -1.0
        stack = np.ascontiguousarray(np.stack([spd, bad, spd]).astype(dt))
        try:
            ok = _run(factor, stack, clean=True)
        except Exception:  # noqa: BLE001 - any failure of a candidate backend rules it out
            return False
        want = np.linalg.cholesky(spd)
        tol = 1e-4 if dt in (np.dtype(np.float32), np.dtype(np.complex64)) else 1e-12
        if list(ok) != [True, False, True]:
            return False
        if not all(np.allclose(stack[i], want, rtol=tol, atol=tol * 10) for i in (0, 2)):
            return False
    return True


def _resolve() -> tuple[_Factor, str]:
    global _backend
    if _backend is None:
        order = os.environ.get("LIPGRAPH_POTRF", "ctypes,numpy,scipy")
        for name in [s.strip() for s in order.split(",") if s.strip()]:
            made = _MAKERS[name]() if name in _MAKERS else None
            if made is not None and _self_check(made[0]):
                _backend = made
                break
        else:
            raise RuntimeError(f"no working LAPACK potrf among backends {order!r}")
    return _backend


def use_backend(name: str | None) -> str | None:
    """Force a backend (``ctypes``, ``ctypes-scipy``, ``ctypes-numpy``, ``numpy`` or ``scipy``; None: resolve
    again). For tests and debugging; ``LIPGRAPH_POTRF`` (a comma-separated order) does the same.

    Returns the backend's description, or None when it is not available here (nothing changes then).
    """
    global _backend
    if name is None:
        _backend = None
        return None
    made = _MAKERS[name]()
    if made is None or not _self_check(made[0]):
        return None
    _backend = made
    return made[1]


def backend_name() -> str:
    """The description of the backend :func:`cholesky_inplace` uses (resolving it if needed)."""
    return _resolve()[1]


def backend_used() -> str | None:
    """The backend of the last factorisation run in this process since :func:`reset_used` (None: none)."""
    return _used


def reset_used() -> None:
    """Forget which backend ran (:func:`lipgraph.analyze.analyze` records the one of its own analysis)."""
    global _used
    _used = None


def _run(factor: _Factor, h: np.ndarray, clean: bool) -> np.ndarray:
    f, k = h.shape[0], h.shape[1]
    infos = factor(h)
    d = np.arange(k)
    pivots = h[:, d, d]
    # info = 0 is not enough (OpenBLAS lets NaN pivots through): every pivot finite and positive.
    ok = (infos == 0) & np.all(np.isfinite(pivots) & (pivots.real > 0), axis=1)
    if clean and k > 1:  # a masked write (six times faster than scattering the triangle's indices)
        np.copyto(h, 0, where=~np.tri(k, dtype=bool))
    return ok if f else np.zeros(0, dtype=bool)


def cholesky_inplace(h: np.ndarray, clean: bool = False) -> np.ndarray:
    """Factorise every Hermitian matrix of the stack ``h`` (``f x k x k``) in place: ``H = L L^H``.

    Reads the lower triangle of each matrix (C order; the matrix factorised is its Hermitian completion)
    and leaves ``L`` there; the strict upper triangle is zeroed when ``clean``, else left unspecified.
    Returns a boolean mask: True where the factorisation completed with finite positive pivots (the
    condition of Higham 2002, Thm 10.3). dtypes: float32, float64, complex64, complex128. A stack that is
    not C-contiguous is factorised in a contiguous copy and written back.
    """
    global _used
    if h.ndim != 3 or h.shape[1] != h.shape[2]:
        raise ValueError(f"expected a stack of square matrices, got shape {h.shape}")
    if h.dtype not in _LETTER:
        raise TypeError(f"potrf needs float32/float64/complex64/complex128, got {h.dtype}")
    if not h.flags.writeable:
        raise ValueError("the stack is factorised in place: it must be writeable")
    factor, name = _resolve()
    work = h if h.flags.c_contiguous else np.ascontiguousarray(h)
    ok = _run(factor, work, clean)
    if work is not h:
        h[...] = work
    _used = name
    return ok


__all__ = ["backend_name", "backend_used", "cholesky_inplace", "reset_used", "use_backend"]
