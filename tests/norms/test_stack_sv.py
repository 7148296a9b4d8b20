"""Certified max-over-frequencies singular value (lipgraph.norms.stack_sv) against float64 SVD oracles.

The certificate (Gram + Lanczos trial value + Cholesky, exact eigensolve fallback) must never be below
the exact maximum, and at most sqrt(1 + tol) above it; through a real Conv it must bound the exact
norm of the op computed by onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest

from lipgraph.norms import stack_sv
from lipgraph.norms.conv import conv_circulant_bound
from tests.rules.conv_oracle import exact_norm


def _stack(rng, f, m, n, complex_=True, scale=None):
    a = rng.standard_normal((f, m, n))
    if complex_:
        a = a + 1j * rng.standard_normal((f, m, n))
    if scale is not None:
        a *= np.asarray(scale)[:, None, None]
    return a


def _exact(a):
    return float(np.linalg.svd(a, compute_uv=False)[:, 0].max())


@pytest.mark.parametrize(
    ("f", "m", "n", "complex_"),
    [
        (40, 30, 30, True),  # Gram path, complex batched product
        (6, 130, 200, True),  # real-split product (rows >= 128)
        (6, 200, 130, True),  # the other side is smaller
        (9, 60, 25, False),  # real matrices (self-conjugate frequencies, 1x1 kernels)
        (30, 10, 40, True),  # small side: batched SVD
        (3, 1, 17, True),  # vectors
    ],
)
def test_top_sv_stack_is_a_tight_upper_bound(f, m, n, complex_):
    rng = np.random.default_rng(f * 1000 + m + n)
    a = _stack(rng, f, m, n, complex_)
    exact = _exact(a)
    got = stack_sv.top_sv_stack(a)
    assert exact <= got <= exact * np.sqrt(1 + stack_sv.CHOLESKY_TOL) * (1 + 1e-9)
    # The reference (eigensolve everywhere) is a bound too, and the two agree to the tolerance.
    ref = stack_sv.top_sv_stack_eig(a)
    assert exact <= ref <= exact * (1 + 1e-9)


def test_maximum_outside_the_lanczos_candidates_falls_back_to_the_exact_value():
    """Many near-equal frequencies, the largest not among the few that get a Lanczos run: its
    certificate fails and the exact fallback must still cover it (never the estimate's value)."""
    rng = np.random.default_rng(5)
    scale = np.ones(60)
    scale[37] = 1.003  # slightly above the rest: a rough power step will not single it out
    a = _stack(rng, 60, 40, 40, scale=scale)
    exact = _exact(a)
    got = stack_sv.top_sv_stack(a, tol=0.0)  # trial value = the estimate itself: failures are likely
    assert exact <= got <= exact * (1 + 1e-9)


def test_cholesky_certificate_accepts_only_true_upper_values():
    rng = np.random.default_rng(7)
    a = _stack(rng, 1, 50, 70)[0]
    g = a @ a.conj().T
    lam = float(np.linalg.eigvalsh(g)[-1])
    ok, slack = stack_sv.cholesky_certifies(g, lam * (1 + 1e-6))
    assert ok and lam <= lam * (1 + 1e-6) + slack
    assert slack < 1e-8 * lam
    for below in (1 - 1e-9, 1 - 1e-6, 0.9):  # near misses must be rejected
        ok, _ = stack_sv.cholesky_certifies(g, lam * below)
        assert not ok


def test_gram_iteration_stack_bounds_every_matrix_and_tightens():
    rng = np.random.default_rng(11)
    a = _stack(rng, 12, 20, 33)
    exact = np.linalg.svd(a, compute_uv=False)[:, 0]
    prev = None
    for t in (1, 3, 6, 9):
        est = stack_sv.gram_iteration_stack(a, t)
        assert np.all(est >= exact)
        if prev is not None:
            assert np.all(est <= prev * (1 + 1e-12))
        prev = est
    assert np.all(prev <= exact * 1.01)


def test_gram_allowance_covers_the_rounding_of_the_product():
    rng = np.random.default_rng(13)
    a = _stack(rng, 3, 140, 150) * 1e3
    g, err = stack_sv.gram_stack(a)
    for i in range(3):
        exact_g = a[i] @ a[i].conj().T  # float64 too; compare in the 2-norm with a margin
        assert np.linalg.norm(g[i] - exact_g, 2) <= err
    assert err < 1e-9 * float(np.linalg.svd(a, compute_uv=False)[:, 0].max()) ** 2


def test_conv_circulant_bound_through_the_certificate_bounds_the_onnxruntime_norm():
    """A 32-channel conv (the Cholesky path; the symbols are 32 x 32) against the exact dense norm."""
    rng = np.random.default_rng(17)
    w = (rng.standard_normal((32, 32, 3, 3)) / 12).astype(np.float32)
    exact = exact_norm("Conv", w, (1, 32, 5, 5), pads=[1, 1, 1, 1])
    nb = conv_circulant_bound(w, 1, [1, 1], [1, 1], [1, 1], [1, 1], [5, 5])
    assert exact * (1 - 1e-9) <= nb.value <= exact * 1.10
    strided = exact_norm("Conv", w, (1, 32, 6, 6), pads=[1, 1, 1, 1], strides=[2, 2])
    nb2 = conv_circulant_bound(w, 1, [2, 2], [1, 1], [1, 1], [1, 1], [6, 6])
    assert strided * (1 - 1e-9) <= nb2.value <= strided * 1.25


@pytest.mark.parametrize(("n", "k", "s", "c"), [(1, 3, 1, 6), (2, 3, 2, 5), (9, 3, 1, 8), (7, 5, 2, 4)])
def test_conv_bound_is_the_least_of_its_candidates(n, k, s, c):
    """The LMT bound is skipped only when a lower estimate of it is already above the chosen bound:
    the result is never above min(circulant, LMT) and never below the exact norm."""
    from lipgraph.norms import conv as conv_norms

    rng = np.random.default_rng(n * 7 + k)
    w = rng.standard_normal((c, c, k, k))
    w[:, :, k // 2, k // 2] *= 4.0  # a strong centre tap: the two bounds come close on tiny inputs
    p = k // 2
    old = conv_norms._DENSE_FLOP_BUDGET
    conv_norms._DENSE_FLOP_BUDGET = 0.0
    try:
        got = conv_norms.conv_bound(w, 1, [s, s], [1, 1], [p, p], [p, p], [n, n]).value
    finally:
        conv_norms._DENSE_FLOP_BUDGET = old
    circ = conv_norms.conv_circulant_bound(w, 1, [s, s], [1, 1], [p, p], [p, p], [n, n]).value
    lmt = conv_norms.conv_lmt_bound(w, 1, [s, s], [1, 1]).value
    exact = conv_norms.conv_dense_bound(w, 1, conv_norms.ConvGeometry((n, n), (s, s), (1, 1), (p, p), (p, p))).value
    assert exact * (1 - 1e-9) <= got <= min(circ, lmt) * (1 + 1e-12)


def test_large_dense_matrix_uses_the_certificate(monkeypatch):
    from lipgraph.norms import dense

    monkeypatch.setattr(dense, "_CERTIFY_MIN", 40)
    a = np.random.default_rng(3).standard_normal((60, 90))
    nb = dense.spectral_norm(a)
    exact = float(np.linalg.svd(a, compute_uv=False)[0])
    assert nb.method.startswith("certified") and exact <= nb.value <= exact * (1 + 1e-4)


def test_norms_downstream_of_a_refusal_are_skipped_but_own_refusals_still_named():
    """A ViT-style model: every attention product is named, a later node that is unsupported in its own
    right is named too, and the linear layers after the first refusal are not given full SVDs."""
    import warnings

    import lipgraph
    from lipgraph.errors import UnsupportedModelError
    from lipgraph.norms import dense, discarded, values_discarded

    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.out = torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)

        def forward(self, x):  # noqa: ANN001, ANN201
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return x + self.out(torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.Sequential(Block(), Block())
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.head(torch.floor(self.blocks(x)).mean(dim=1))

    torch.manual_seed(0)
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(1, 5, 8),), buf, dynamo=False, input_names=["x"])
    import onnx

    model = onnx.load_from_string(buf.getvalue())
    calls = []
    orig = dense.spectral_norm

    def counting(a):  # noqa: ANN001, ANN202
        calls.append(discarded())
        return orig(a)

    dense_mod_rules = __import__("lipgraph.rules.linear", fromlist=["x"])
    old = getattr(dense_mod_rules, "spectral_norm", None)
    if old is not None:
        dense_mod_rules.spectral_norm = counting
    try:
        with pytest.raises(UnsupportedModelError) as info:
            lipgraph.analyze(model)
    finally:
        if old is not None:
            dense_mod_rules.spectral_norm = old
    named = [(r.op_type, r.node_name) for r in info.value.refusals]
    assert sum(op == "MatMul" for op, _ in named) == 4, named
    assert any(op == "Floor" for op, _ in named), named
    assert not discarded()  # only inside the walker's re-run of a tainted node
    if old is not None:
        assert True in calls and calls[0] is False  # the first linear layer was bounded for real
    with values_discarded():
        assert discarded() and dense.spectral_norm(np.eye(3)).method.startswith("not computed")
