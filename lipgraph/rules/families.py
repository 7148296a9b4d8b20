"""Rules for the fused 1-Lipschitz family blocks (domain ``lipgraph``), made by the passes
lipgraph/passes/power_series.py, residual_sandwich.py and sandwich.py.

Each rule returns the smaller of the family's structural certificate (when its preconditions hold
for the stored constants) and the bound the ops would get one by one, so recognising a block never
loosens a bound. The mathematics is in each docstring and in docs/lipschitz-families.md.
"""

from __future__ import annotations

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.norms.conv import conv_bound
from lipgraph.norms.dense import spectral_norm
from lipgraph.norms.series import abs_series, imaginary_axis_max, perturbation, skew_split_kernel, skew_split_matrix
from lipgraph.rules.registry import LIPGRAPH_DOMAIN, Bound, RuleContext, rule


def operator_norm(attrs: dict, weight: np.ndarray) -> float:
    """Sound upper bound of the norm of the dense matrix or (zero-padded) conv ``weight`` in ``attrs``' geometry."""
    if attrs["kind"] == "dense":
        return spectral_norm(weight).value
    if not np.any(weight):
        return 0.0
    try:
        nb = conv_bound(
            weight,
            attrs["group"],
            attrs["strides"],
            attrs["dilations"],
            attrs["pads_begin"],
            attrs["pads_end"],
            attrs["spatial"],
            want_lower=False,
        )
    except ValueError as exc:
        raise Refuse(str(exc)) from exc
    return nb.value


def _skew_geometry(attrs: dict) -> bool:
    """True when the op's adjoint is the op with the adjoint weight (so 'skew' is checkable on the weight)."""
    if attrs["kind"] == "dense":
        m = attrs["matrix"]
        return m.shape[0] == m.shape[1]
    k = attrs["kernel"]
    if attrs["group"] != 1 or k.shape[0] != k.shape[1] or any(s != 1 for s in attrs["strides"]):
        return False
    for ks, dl, pb, pe in zip(k.shape[2:], attrs["dilations"], attrs["pads_begin"], attrs["pads_end"], strict=True):
        if ks % 2 == 0 or pb != pe or pb != dl * (ks - 1) // 2:
            return False
    return True


@rule("PowerSeries", domain=LIPGRAPH_DOMAIN)
def power_series(ctx: RuleContext) -> Bound:
    """Power series ``sum_i a_i A^i x`` of one square operator (SOC): ``||p(A)||``, near 1 for skew A.

    What: the chain ``x + a_1 A x + ... + a_m A^m x`` fused by the power-series pass, A a Conv
    (zero padding) or a dense matrix; skew orthogonal convolutions use ``a_i = 1/i!``.
    How: split ``A = S + N`` with S exactly skew-adjoint (the weight minus its adjoint, halved;
    for a stride-1 conv with symmetric 'same' zero padding the adjoint is the conv with channels
    swapped and taps flipped). ``p(S)`` is normal with eigenvalues ``p(i theta)``,
    ``|theta| <= rho``, ``rho >= ||S||`` (an upper bound of the operator norm: exact SVD or
    circulant FFT bound with rounding allowance), so ``||p(S)|| <= max_{|theta| <= rho}
    |p(i theta)|``, bounded rigorously on a grid with the polynomial's slope. The non-skew rest
    adds ``sum_i |a_i| ((rho + delta)^i - rho^i)``, ``delta >= ||N||`` (0 for an exactly skew
    weight). The result is the min of that and ``sum_i |a_i| ||A||^i`` (the op-by-op bound).
    How tight: within ~1e-4 of ``max |p(i theta)|`` over the spectrum's hull; equal to the exact
    norm when the extreme eigenvalue of S sits where ``|p(i theta)|`` peaks (1 + rho^(m+1)/(m+1)!
    at worst for the exponential). Nearly skew weights lose ``~ delta e^rho``.
    Source: Singla and Feizi 2021 (skew orthogonal convolutions); Sedghi, Gupta, Long 2019 (conv
    spectra).
    """
    _, lin = ctx.single_variable_input()
    attrs = ctx.node.attrs
    coefs = attrs["coefficients"]
    weight = attrs["matrix"] if attrs["kind"] == "dense" else attrs["kernel"]
    generic = abs_series(coefs, operator_norm(attrs, weight))
    best, method = generic, f"power series of {attrs['terms']} terms: sum |a_i| ||A||^i"
    if _skew_geometry(attrs):
        split = skew_split_matrix if attrs["kind"] == "dense" else skew_split_kernel
        s, n_hat, n_err = split(weight)
        rho = operator_norm(attrs, s)
        delta = (operator_norm(attrs, n_hat) + n_err) if np.any(n_hat) else 0.0
        cand = imaginary_axis_max(coefs, rho) + (perturbation(coefs, rho, delta) if delta else 0.0)
        if cand < best:
            kind = "exactly skew" if delta == 0.0 else f"nearly skew, ||A - S|| <= {delta:.3g}"
            best, method = (
                cand,
                f"power series of {attrs['terms']} terms, {kind}: max |p(i theta)|, |theta| <= {rho:.4g}",
            )
    return Bound(best * lin, method, factor=best)
