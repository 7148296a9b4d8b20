"""Attacks on the float32 tier of the circulant conv bound (``lipgraph.norms.conv_tiers``, ``stack_sv32``).

Kernels chosen to break a float32 certificate: channels whose scales differ by 1e12 (float32 Gram entries of
the small channels are pure rounding noise next to the large ones), all-zero channels (zero rows and columns
of the Cholesky factor, where the Collatz-Wielandt vector has nothing to weigh), subnormal float32 weights
beside normal ones, and a maximum planted just above the other frequencies. Each bound must be at least the
exact value (the float64 SVD of every symbol, and the dense operator's norm through ONNX Runtime), and the
tier must actually run (it is forced on below its usual 128-channel minimum). Non-finite kernels must never
give a finite bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipgraph.errors import Refuse
from lipgraph.norms import conv_fft, conv_tiers, stack_sv
from lipgraph.norms.conv import conv_circulant_bound
from tests.norms.test_conv_gram import exact_norm
from tests.norms.test_float32_tier import _circulant_exact

TIGHT = math.sqrt(1 + stack_sv.CHOLESKY_TOL) * (1 + 1e-9)


def _tiered(monkeypatch, w: np.ndarray, n: int) -> tuple[float, dict[str, int]]:
    monkeypatch.setattr(conv_fft, "gram_kernel_cost", lambda shape, f: (0.0, 1.0))  # the direct path
    monkeypatch.setattr(conv_tiers, "TIER_MIN_SIDE", 16)
    counts: dict[str, int] = {}
    orig = conv_tiers.tiered_gram_bound

    def counting(*args):  # noqa: ANN002, ANN202
        sq, c = orig(*args)
        counts.update(c)
        return sq, c

    monkeypatch.setattr(conv_fft, "tiered_gram_bound", counting)
    nb = conv_circulant_bound(w, 1, (1, 1), (1, 1), (1, 1), (1, 1), (n, n))
    return float(nb.value), counts


def _kernel(kind: str) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    w = rng.standard_normal((40, 32, 3, 3)) / 10
    if kind == "mixed-input-scales":  # every other input channel 1e6, the rest 1e-6
        w[:, ::2] *= 1e6
        w[:, 1::2] *= 1e-6
    elif kind == "mixed-output-scales":
        w[::3] *= 1e5
        w[1::3] *= 1e-7
    elif kind == "zero-channels":  # zero rows and columns of every symbol, so of mu I - G's factor
        w[::5] = 0.0
        w[:, 5:9] = 0.0
    elif kind == "subnormal-weights":  # float32 subnormals beside normal weights
        w[:20] *= 1e-39
    elif kind == "near-the-low-end":  # a maximum near 2^-50 (inside the tier's range) and channels that underflow
        w *= 1e-8
        w[:, 16:] *= 1e-22
    elif kind == "planted-maximum":  # one frequency barely above the others: a near tie at the maximum
        w = np.zeros((40, 32, 3, 3))
        w[:, :, 1, 1] = rng.standard_normal((40, 32)) / 10
        w[:, :, 0, 1] = 1e-4 * rng.standard_normal((40, 32))
    return w.astype(np.float32)


@pytest.mark.parametrize(
    "kind",
    [
        "mixed-input-scales",
        "mixed-output-scales",
        "zero-channels",
        "subnormal-weights",
        "near-the-low-end",
        "planted-maximum",
    ],
)
def test_float32_tier_bound_covers_the_exact_norm(monkeypatch, kind: str) -> None:
    w = _kernel(kind)
    n = 4
    value, counts = _tiered(monkeypatch, w, n)
    assert counts, kind  # the tier ran
    circ = _circulant_exact(w.astype(np.float64), 1, n, 1)
    assert circ <= value <= circ * TIGHT, (kind, value, circ, counts)
    exact = exact_norm("Conv", w, (1, w.shape[1], n, n), pads=[1, 1, 1, 1])
    assert exact * (1 - 1e-9) <= value


def test_planted_maximum_ranked_last_is_still_covered(monkeypatch) -> None:
    """The near-tied frequencies with estimates in the reverse order of the truth: the true maximum is then
    tried in float32 against a lower float64 value and must fail there (a float32 tier that certified
    frequencies against 1.01 times its target makes this test and the planted case above fail)."""

    def upside_down(gram, steps):  # noqa: ANN001, ANN202
        return -np.linalg.eigvalsh(gram.astype(np.complex128))[:, -1]

    monkeypatch.setattr(conv_tiers, "lanczos_top", upside_down)
    w = _kernel("planted-maximum")
    value, counts = _tiered(monkeypatch, w, 4)
    circ = _circulant_exact(w.astype(np.float64), 1, 4, 1)
    assert counts["float32"] + counts["float64"] > 1
    assert circ <= value <= circ * TIGHT


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_kernels_never_give_a_finite_bound(monkeypatch, bad: float) -> None:
    w = _kernel("plain")
    w[3, 4, 1, 2] = bad
    try:
        value, _ = _tiered(monkeypatch, w, 4)
    except (Refuse, ValueError, FloatingPointError, np.linalg.LinAlgError):
        return
    assert not math.isfinite(value) or math.isnan(value), value
