"""Linear bound propagation over an L2 ball for chains of affine layers and ReLU / LeakyReLU, sound in float64.

For a chain ``z_0 = W_0 x + b_0``, ``h_j = sigma_j(z_j)``, ``z_{j+1} = W_{j+1} h_j + b_{j+1}``, logits
``W_m h_{m-1} + b_m``, a sample ``x`` and a radius ``r``, :meth:`CrownL2.margin_lower_bounds` returns, per
class ``j``, a number below ``min_{||x' - x|| <= r} (F_t - F_j)(x')`` of the *real-arithmetic* network. It is
CROWN (Zhang et al., NeurIPS 2018; Fast-Lin, Weng et al., ICML 2018) for the L2 ball: pre-activation bounds
layer by layer by backward linear relaxation (the first layer exactly, ``z_0(x) +- r ||row||_2``), one lower
and one upper line per unstable unit, and ``min_{ball} a.x + c = a.x + c - r ||a||_2`` at the input.

How it stays sound in floating point (derivation: docs/local-bounds.md). Any backward vector is allowed:
the relaxation is valid for whatever float64 vector was computed, so rounding only has to be charged where
a computed vector replaces an exact product. Each such replacement is an entrywise error bound (Higham
2002, ch. 3: ``|fl(nu W) - nu W| <= gamma_n |nu| |W|``) turned into a scalar through the bounds on ``|h|``
or ``|z|`` over the ball, which the layer-by-layer pass has already proven. The relaxation lines are
rounded outwards (upper chord slope and intercept rounded up: still an upper line), the input norm
``||W_0^T nu||_2`` goes through the Gram matrix ``W_0 W_0^T`` with its own rounding bound, and the final
sums carry a relative slack. How tight: exactly CROWN's bound up to terms ~1e-12 relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lipgraph.norms.rounding import gamma

U64 = 2.0**-53
# every computed error term is inflated by this: it covers the float64 roundings of the (nonnegative)
# products and sums that evaluate the term itself (relative gamma_n < 1e-11 for any n below 1e5)
SLACK = 2.0**-20
TINY = 2.0**-46  # relative slack of the final few additions of a bound (each rounds by at most 2^-53)
ABS_TINY = 1e-290  # absolute slack: products that underflow lose at most 2^-1075 each


@dataclass
class Affine:
    """``z = w h + b`` with the model's constants: ``w`` (out, in) and ``b`` exact in float64, except that a
    bias summed from several constants may round: ``b_err >= |b_real - b|`` entrywise."""

    w: np.ndarray
    b: np.ndarray
    b_err: np.ndarray


def _up(v: np.ndarray | float) -> np.ndarray:
    """Round a nonnegative *error term* up by the relative slack (its own evaluation's roundings); never used on
    the bound's main terms, which it would loosen by ~1e-6."""
    return np.asarray(v) * (1.0 + SLACK) + ABS_TINY


def chain_work(sizes: list[int], input_dim: int) -> float:
    """Multiply-adds per sample and radius for layers of ``sizes`` (outputs, logits last) on ``input_dim`` inputs:
    2 rows per unit of each hidden layer after the first (its bounds; the first layer's are closed-form) and one
    per logit, each pushed back to the first layer, then through the Gram matrix (bounds) or W_0 (margins)."""
    n = sizes
    total = 0.0
    for k in range(1, len(n)):
        rows = 2 * n[k] if k < len(n) - 1 else n[-1]
        first = n[0] * n[0] if k < len(n) - 1 else n[0] * input_dim
        total += rows * (sum(n[j] * n[j - 1] for j in range(1, k)) + first + n[0])
    return float(total)


class CrownL2:
    """CROWN over L2 balls for one chain; the pair-independent quantities are computed once."""

    def __init__(self, layers: list[Affine], alphas: list[float]):
        if len(layers) != len(alphas) + 1 or not alphas:
            raise ValueError("a chain needs k affine layers around k - 1 >= 1 activations")
        for a in alphas:
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"activation slope {a} outside [0, 1]")
        self.layers, self.alphas = layers, [float(a) for a in alphas]
        self.abs_w = [np.abs(lay.w) for lay in layers]
        self.abs_b = [np.abs(lay.b) + lay.b_err for lay in layers]
        w0 = layers[0].w
        n0, d = w0.shape
        self.row_norm0 = np.nextafter(np.sqrt(np.einsum("ij,ij->i", w0, w0)) * (1.0 + gamma(d + 2, U64)), np.inf)
        # ||W_0^T nu||^2 = nu^T G nu with G = W_0 W_0^T; the float64 Gram and the quadratic form's evaluation
        # differ from it by at most nu^T M nu <= ||M||_F ||nu||^2 (Higham 2002, sec. 3.1)
        self.gram = w0 @ w0.T
        m = gamma(2 * n0 + 2, U64) * np.abs(self.gram) + gamma(d, U64) * (self.abs_w[0] @ self.abs_w[0].T)
        self.gram_err = float(_up(math.sqrt(float(np.sum(m * m))) * (1.0 + gamma(m.size + 2, U64))))
        # || |W_0| ||_2 <= its Frobenius norm: turns the entrywise error of fl(nu W_0) into a norm
        self.abs_w0_norm = float(_up(math.sqrt(float(np.sum(w0 * w0))) * (1.0 + gamma(w0.size + 2, U64))))

    @property
    def sizes(self) -> list[int]:
        return [int(lay.w.shape[0]) for lay in self.layers]

    def work_per_sample(self) -> float:
        """Multiply-adds per sample and radius (the pre-activation passes and the margins)."""
        return chain_work(self.sizes, int(self.layers[0].w.shape[1]))

    # -- the pieces ---------------------------------------------------------------------------------------

    def first_layer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``z_0(x)`` in float64 and an entrywise bound of its distance to the real value."""
        lay = self.layers[0]
        xf = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        z = xf @ lay.w.T + lay.b
        d = lay.w.shape[1]
        err = _up(gamma(d + 1, U64) * (np.abs(xf) @ self.abs_w[0].T + np.abs(lay.b)) + lay.b_err)
        return z, err

    def _relax(self, k: int, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per unit of layer ``k``: lower slope ``a`` (line ``a z``), upper line ``A z + B``, valid on [lo, hi]."""
        alpha = self.alphas[k]
        unstable = (lo < 0) & (hi > 0)
        active = lo >= 0
        lower = np.where(active, 1.0, alpha)
        upper = lower.copy()
        intercept = np.zeros_like(lo)
        if np.any(unstable):
            lo_u, hi_u = np.where(unstable, lo, -1.0), np.where(unstable, hi, 1.0)
            # chord from (lo, alpha lo) to (hi, hi): slope (hi - alpha lo) / (hi - lo), rounded up; any larger
            # slope through (lo, alpha lo) is still above sigma on [lo, hi]
            num = np.nextafter(hi_u + np.nextafter(alpha * -lo_u, np.inf), np.inf)
            den = np.nextafter(hi_u - lo_u, -np.inf)
            slope = np.nextafter(num / den, np.inf)
            icpt = np.nextafter(-lo_u * np.nextafter(slope - alpha, np.inf), np.inf)  # >= -lo (slope - alpha)
            upper = np.where(unstable, slope, upper)
            intercept = np.where(unstable, icpt, 0.0)
            # adaptive lower slope (CROWN): 1 where the unit is more often active, alpha otherwise
            lower = np.where(unstable, np.where(hi > -lo, 1.0, alpha), lower)
        return lower, upper, intercept

    def _magnitudes(self, k: int, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on ``|z_k|`` and ``|h_k|`` over the ball (sigma is monotone)."""
        a = self.alphas[k]
        z = np.maximum(np.abs(lo), np.abs(hi))
        h = np.maximum(np.abs(np.where(lo >= 0, lo, a * lo)), np.abs(np.where(hi >= 0, hi, a * hi)))
        return z, _up(h)

    def _backward(
        self,
        mu: np.ndarray,
        c: np.ndarray,
        err: np.ndarray,
        top: int,
        bounds: list[tuple],
        z0: np.ndarray,
        z0_err: np.ndarray,
        r: float,
        direct: bool = False,
    ) -> np.ndarray:
        """Lower bounds of ``mu . h_top + c`` over the ball, ``mu`` (N, R, n_top); ``err`` (N, R) is rounding
        charged so far. ``bounds[k] = (lo, hi, a, A, B, |z|, |h|)`` for layers ``k <= top``. ``direct``: take
        ``||W_0^T nu||`` from the vector itself (tight to ~1e-15) instead of the Gram matrix (cheaper for many
        rows, but its rounding term enters under a square root: ~1e-7 absolute)."""
        for k in range(top, -1, -1):
            lo, hi, low, upp, icpt, zmag, hmag = bounds[k]
            nu = mu * low[:, None, :]  # the lower line everywhere first ...
            # ... then the upper line where the coefficient is negative, on the units whose lines differ in some
            # sample of the batch (the unstable ones): the same single product per entry, on fewer columns
            cols = np.flatnonzero(np.any((upp != low) | (icpt != 0), axis=0))  # (a chord slope may round to 1)
            if cols.size:
                m = mu[:, :, cols]
                neg = m < 0
                nu[:, :, cols] = np.where(neg, m * upp[:, None, cols], m * low[:, None, cols])
                shift = np.einsum("nrk,nk->nr", np.where(neg, m, 0.0), icpt[:, cols])  # <= 0: upper intercepts
            else:
                shift = np.zeros(c.shape)
            terms = np.abs(c) + np.abs(shift)
            c = c + shift
            abs_nu = np.abs(nu)
            # the products mu * slope round (2u |nu| |z|); the sum into c rounds (gamma |terms|)
            err = err + _up(2.0 * U64 * np.einsum("nrk,nk->nr", abs_nu, zmag) + gamma(nu.shape[2] + 2, U64) * terms)
            if k == 0:
                break
            lay = self.layers[k]
            n_in = lay.w.shape[0]
            # fl(nu W) errs by gamma |nu| |W| entrywise, times |h| <= H; nu . b by gamma (|c| + |nu| |b|); b by b_err
            weights = gamma(n_in, U64) * (bounds[k - 1][6] @ self.abs_w[k].T) + (
                gamma(n_in + 2, U64) * np.abs(lay.b) + lay.b_err
            )
            err = err + _up(gamma(n_in + 2, U64) * np.abs(c) + np.einsum("nrk,nk->nr", abs_nu, weights))
            c = c + nu @ lay.b
            mu = nu @ lay.w
        # at z_0 = W_0 x' + b_0: min over the ball of nu . z_0 is nu . z_0(x) - r ||W_0^T nu||_2
        value = np.einsum("nrk,nk->nr", nu, z0)
        err = err + _up(np.einsum("nrk,nk->nr", abs_nu, z0_err + gamma(nu.shape[2] + 1, U64) * np.abs(z0)))
        if direct:  # ||a_real|| <= ||fl(nu W_0)|| + gamma_n || |nu| |W_0| || <= ... + gamma_n ||nu|| || |W_0| ||
            a = nu @ self.layers[0].w
            grow = 1.0 + gamma(a.shape[2] + 2, U64)
            norm = np.sqrt(np.einsum("nrk,nrk->nr", a, a)) * grow + _up(
                gamma(nu.shape[2], U64) * self.abs_w0_norm * np.sqrt(np.einsum("nrk,nrk->nr", nu, nu)) * grow
            )
            norm = np.nextafter(norm, np.inf)
        else:
            q = np.einsum("nrk,nrk->nr", nu @ self.gram, nu) + _up(self.gram_err * np.einsum("nrk,nrk->nr", nu, nu))
            norm = np.nextafter(np.sqrt(np.maximum(q, 0.0)), np.inf)
        radius_term = r * norm
        lb = c + value - radius_term - err
        return lb - (TINY * (np.abs(c) + np.abs(value) + radius_term + err) + ABS_TINY)

    def _first_bounds(self, z0: np.ndarray, z0_err: np.ndarray, r: float) -> tuple:
        """The first layer's box over the ball, exact up to rounding: ``z_0(x) +- (r ||row||_2 + err)``, with its
        relaxation (shared with the conv form, whose first layer has the same row norms)."""
        rad = np.nextafter(r * self.row_norm0, np.inf)
        spread = z0_err + rad
        slack = TINY * (np.abs(z0) + spread) + ABS_TINY
        lo, hi = z0 - spread - slack, z0 + spread + slack
        return (lo, hi, *self._relax(0, lo, hi), *self._magnitudes(0, lo, hi))

    def layer_bounds(self, z0: np.ndarray, z0_err: np.ndarray, r: float) -> list[tuple]:
        """Pre-activation bounds of every hidden layer over the ball of radius ``r``, with their relaxations."""
        bounds = [self._first_bounds(z0, z0_err, r)]
        n = len(z0)
        for k in range(1, len(self.alphas)):
            lay = self.layers[k]
            rows = lay.w.shape[0]
            mu = np.broadcast_to(np.concatenate([lay.w, -lay.w])[None], (n, 2 * rows, lay.w.shape[1]))
            c = np.broadcast_to(np.concatenate([lay.b, -lay.b])[None], (n, 2 * rows))
            err = np.broadcast_to(np.concatenate([lay.b_err, lay.b_err])[None], (n, 2 * rows))
            lb = self._backward(mu, c, err, k - 1, bounds, z0, z0_err, r)
            lo, hi = lb[:, :rows], -lb[:, rows:]
            hi = np.maximum(hi, lo)  # only rounding could cross them; the wider box stays sound
            bounds.append((lo, hi, *self._relax(k, lo, hi), *self._magnitudes(k, lo, hi)))
        return bounds

    def margin_lower_bounds(
        self, x: np.ndarray, target: np.ndarray, r: float, first: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """(N, K): below ``(F_t - F_j)(x')`` for every ``x'`` within ``r`` of ``x`` (+inf at ``j = t``)."""
        z0, z0_err = self.first_layer(x) if first is None else first
        bounds = self.layer_bounds(z0, z0_err, r)
        t = np.asarray(target, dtype=np.int64)
        mu, c, err = pair_rows(self.layers[-1], t, bounds[-1][6])
        lb = self._backward(mu, c, err, len(self.alphas) - 1, bounds, z0, z0_err, r, direct=True)
        lb[np.arange(len(t)), t] = np.inf
        return lb


def pair_rows(last: Affine, target: np.ndarray, hmag: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last layer's rows for ``F_t - F_j``, every class j: ``(mu, c, err)`` with ``mu`` (N, K, n) the row
    differences (one rounding each), ``c`` the bias differences and ``err`` what those roundings and the biases'
    own errors may cost, through ``hmag`` (N, n), the bound on ``|h|`` entering the layer."""
    mu = last.w[target][:, None, :] - last.w[None]
    c = last.b[target][:, None] - last.b[None]
    err = _up(
        U64 * np.einsum("nrk,nk->nr", np.abs(mu), hmag) * 2.0
        + 2.0 * U64 * np.abs(c)
        + last.b_err[target][:, None]
        + last.b_err[None]
    )
    return mu, c, err
