"""CROWN over L2 balls for chains with conv layers, without dense matrices: the structured form of crown_l2.

The same bound and the same rounding argument as :mod:`lipgraph.norms.crown_l2` (CROWN: Zhang et al.,
NeurIPS 2018, for the L2 ball), with each conv layer applied as a convolution: forward with the kernel for
``z_0(x)``, forward with ``|kernel|`` for the rounding terms ``|W| |h|``, and the transposed convolution for the
backward pass. The rows that bound a conv layer's units start on one unit and live on its receptive field:
they are carried as patches (:mod:`lipgraph.norms.conv_patches`), so the bounds of a conv layer cost the
receptive fields' size instead of the whole map's. The input term ``||W_0^T nu||_2`` is taken from the
transposed conv of ``nu`` itself, with its rounding ``gamma_n || |W_0|^T |nu| ||_2`` (the transposed conv of
``|nu|`` with ``|kernel|``) added, as crown_l2 does for the margins ("direct" form). How tight: crown_l2's
bound with that direct form everywhere, up to ~1e-12 relative; soundness: docs/local-bounds.md.

Chains: conv layers first (any strides, pads, dilations, groups), then dense layers (Gemm / MatMul), the
logits dense. A conv after a dense layer is refused (its rows would need the whole map).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipgraph.norms.conv_apply import conv2d_linear
from lipgraph.norms.conv_patches import ConvSpec, Grid, in_map, kernel_rows, patch_transpose, unfold
from lipgraph.norms.crown_l2 import ABS_TINY, TINY, U64, CrownL2, _up, pair_rows
from lipgraph.norms.rounding import gamma

ROW_BLOCK_ENTRIES = 2e7  # patch entries (float64) of one block of rows and samples


@dataclass
class Layer:
    """One affine layer: ``conv`` (a :class:`ConvSpec`) or ``w`` (dense, (out, in)); the bias ``b`` and its
    rounding bound ``b_err`` flat over the output; shapes per sample as (C, H, W) (a vector is (n, 1, 1))."""

    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    b: np.ndarray
    b_err: np.ndarray
    conv: ConvSpec | None = None
    w: np.ndarray | None = None

    def attrs(self) -> dict:
        assert self.conv is not None
        return {
            "strides": self.conv.strides,
            "pads": self.conv.pads,
            "dilations": self.conv.dilations,
            "group": self.conv.group,
        }

    def forward(self, h: np.ndarray, absolute: bool = False) -> np.ndarray:
        """``W h`` (or ``|W| h``), no bias; ``h`` (N, n_in) flat -> (N, n_out) flat."""
        n = len(h)
        if self.conv is None:
            assert self.w is not None
            return h @ (np.abs(self.w) if absolute else self.w).T
        k = np.abs(self.conv.kernel) if absolute else self.conv.kernel
        return conv2d_linear(h.reshape(n, *self.in_shape), k, self.attrs())[0].reshape(n, -1)

    def terms(self) -> int:
        """Products per entry of ``nu W`` (the transposed op)."""
        return self.conv.terms() if self.conv is not None else int(self.out_shape[0])

    def size(self) -> int:
        return int(np.prod(self.out_shape))


class CrownConv:
    """CROWN over L2 balls for a chain of conv and dense layers; interface of :class:`CrownL2`."""

    _relax = CrownL2._relax
    _magnitudes = CrownL2._magnitudes
    _first_bounds = CrownL2._first_bounds

    def __init__(self, layers: list[Layer], alphas: list[float]):
        if len(layers) != len(alphas) + 1 or not alphas:
            raise ValueError("a chain needs k affine layers around k - 1 >= 1 activations")
        for a in alphas:
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"activation slope {a} outside [0, 1]")
        seen_dense = False
        for lay in layers:
            if lay.conv is None:
                seen_dense = True
            elif seen_dense:
                raise ValueError("a conv layer after a dense layer is not handled by the structured form")
        if layers[-1].conv is not None:
            raise ValueError("the logits must come from a dense layer")
        self.layers, self.alphas = layers, [float(a) for a in alphas]
        first = layers[0]
        d = int(np.prod(first.in_shape))
        if first.conv is None:
            assert first.w is not None
            sq = np.einsum("ij,ij->i", first.w, first.w)
            inner = d
        else:  # the squared kernel entries that meet the map (not the padding), per output unit
            sq = conv2d_linear(np.ones((1, *first.in_shape)), first.conv.kernel**2, first.attrs())[0].reshape(-1)
            inner = int(np.prod(first.conv.kernel.shape[1:]))
        self.inner0 = inner
        self.row_norm0 = np.nextafter(np.sqrt(sq) * (1.0 + gamma(inner + 2, U64)), np.inf)

    @property
    def sizes(self) -> list[int]:
        return [lay.size() for lay in self.layers]

    def work_per_sample(self) -> float:
        return structured_work(self.layers)

    # -- forward pieces -----------------------------------------------------------------------------------

    def first_layer(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``z_0(x)`` in float64 and an entrywise bound of its distance to the real value."""
        lay = self.layers[0]
        xf = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        z = lay.forward(xf) + lay.b
        err = _up(gamma(self.inner0 + 1, U64) * (lay.forward(np.abs(xf), absolute=True) + np.abs(lay.b)) + lay.b_err)
        return z, err

    def logits(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Float64 logits (no rounding bound: for the attack that only saves work) and the activation masks."""
        h = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        masks = []
        for k, lay in enumerate(self.layers):
            h = lay.forward(h) + lay.b
            if k < len(self.alphas):
                masks.append(np.where(h >= 0, 1.0, self.alphas[k]))
                h = h * masks[-1]
        return h, masks

    def input_gradient(self, g: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        """``g`` (N, n_top) over the last hidden layer pulled back to the input through the masks."""
        n = len(g)
        for k in range(len(self.alphas) - 1, -1, -1):
            g = g * masks[k]
            lay = self.layers[k]
            if lay.conv is None:
                assert lay.w is not None
                g = g @ lay.w
            else:
                c, h, w = lay.in_shape
                data, _ = patch_transpose(
                    g.reshape(n, 1, 1, 1, *lay.out_shape),
                    Grid.whole(*lay.out_shape[1:]),
                    lay.conv.kernel,
                    lay.conv,
                    (h, w),
                )
                g = data.reshape(n, -1)
        return g

    # -- the backward pass --------------------------------------------------------------------------------

    def _patches(self, v: np.ndarray, k: int, grid: Grid) -> np.ndarray:
        """Per-unit values ``v`` (N, n_k) of layer ``k`` read at the windows of ``grid``: (N, 1, Gh, Gw, C, ph, pw),
        contiguous (they meet every row)."""
        return np.ascontiguousarray(unfold(v.reshape(len(v), *self.layers[k].out_shape), grid))[:, None]

    def _transpose(self, k: int, data: np.ndarray, grid: Grid, absolute: bool = False) -> tuple[np.ndarray, Grid]:
        lay = self.layers[k]
        c, h, w = lay.in_shape
        if lay.conv is None:
            assert lay.w is not None and grid.size == (1, 1)
            n, r = data.shape[:2]
            flat = data.reshape(n, r, -1) @ (np.abs(lay.w) if absolute else lay.w)
            return flat.reshape(n, r, 1, 1, c, h, w), Grid.whole(h, w)
        kern = np.abs(lay.conv.kernel) if absolute else lay.conv.kernel
        return patch_transpose(data, grid, kern, lay.conv, (h, w))

    def _backward(self, mu, grid, c, err, top, bounds, z0, z0_err, r):
        """Lower bounds of ``mu . h_top + c`` over the ball; ``mu`` patches (N, R, Gh, Gw, C, ph, pw) over
        ``h_top``, ``c`` and ``err`` (N, R, Gh, Gw). crown_l2's ``_backward`` with patches (same terms)."""
        for k in range(top, -1, -1):
            lo, hi, low, upp, icpt, zmag, hmag = bounds[k]
            entries = int(np.prod(mu.shape[4:]))
            low_p, upp_p = self._patches(low, k, grid), self._patches(upp, k, grid)
            neg = mu < 0
            nu = mu * np.where(neg, upp_p, low_p)  # one product per entry, as crown_l2
            shift = _patch_dot(np.minimum(mu, 0.0), self._patches(icpt, k, grid))
            terms = np.abs(c) + np.abs(shift)
            c = c + shift
            abs_nu = np.abs(nu)
            err = err + _up(
                2.0 * U64 * _patch_dot(abs_nu, self._patches(zmag, k, grid)) + gamma(entries + 2, U64) * terms
            )
            if k == 0:
                break
            lay = self.layers[k]
            n_t = lay.terms()
            weights = gamma(n_t, U64) * self.layers[k].forward(bounds[k - 1][6], absolute=True) + (
                gamma(entries + 2, U64) * np.abs(lay.b) + lay.b_err
            )
            err = err + _up(gamma(entries + 2, U64) * np.abs(c) + _patch_dot(abs_nu, self._patches(weights, k, grid)))
            c = c + _patch_dot(nu, self._patches(lay.b[None], k, grid))
            mu, grid = self._transpose(k, nu, grid)
        entries = int(np.prod(nu.shape[4:]))
        value = _patch_dot(nu, self._patches(z0, 0, grid))
        err = err + _up(_patch_dot(abs_nu, self._patches(z0_err + gamma(entries + 1, U64) * np.abs(z0), 0, grid)))
        # min over the ball of nu . z_0 = nu . z_0(x) - r ||W_0^T nu||; the computed transpose a errs by at most
        # gamma_n |W_0|^T |nu| entrywise (Higham 2002, ch. 3), so ||a_real|| <= ||a|| + gamma_n || |W_0|^T |nu| ||
        a, _ = self._transpose(0, nu, grid)
        a_abs, _ = self._transpose(0, abs_nu, grid, absolute=True)
        size = int(np.prod(a.shape[4:]))
        grow = 1.0 + gamma(size + 2, U64)
        n_t = self.layers[0].terms()
        norm = np.sqrt(_patch_dot(a, a)) * grow + _up(
            gamma(n_t, U64) * np.sqrt(_patch_dot(a_abs, a_abs)) * grow * (1.0 + gamma(n_t, U64))
        )
        norm = np.nextafter(norm, np.inf)
        radius_term = r * norm
        lb = c + value - radius_term - err
        return lb - (TINY * (np.abs(c) + np.abs(value) + radius_term + err) + ABS_TINY)

    def _unit_rows(self, k: int, channels: slice) -> tuple[np.ndarray, Grid, np.ndarray, np.ndarray]:
        """Rows ``+z_k`` then ``-z_k`` for the output channels (conv) or units (dense) ``channels``."""
        lay = self.layers[k]
        c, h, w = lay.in_shape
        o, oh, ow = lay.out_shape
        b, be = lay.b.reshape(o, oh, ow)[channels], lay.b_err.reshape(o, oh, ow)[channels]
        if lay.conv is None:
            assert lay.w is not None
            rows = lay.w[channels].reshape(-1, c, h, w)
            grid = Grid.whole(h, w)
        else:
            rows = kernel_rows(lay.conv, c)[channels]
            ph, pw = lay.conv.window()
            grid = Grid((oh, ow), lay.conv.strides, lay.conv.pads[:2], (ph, pw))
        mu = np.concatenate([rows, -rows])[None, :, None, None]
        if lay.conv is not None:
            mu = mu * in_map(grid, h, w)[:, None]  # window entries in the padding meet zeros: drop them
        cc = np.concatenate([b, -b])[None]
        ee = np.concatenate([be, be])[None]
        return mu, grid, cc, ee

    def layer_bounds(self, z0: np.ndarray, z0_err: np.ndarray, r: float) -> list[tuple]:
        bounds = [self._first_bounds(z0, z0_err, r)]
        n = len(z0)
        for k in range(1, len(self.alphas)):
            lay = self.layers[k]
            o, oh, ow = lay.out_shape
            lo, hi = np.empty((n, o, oh, ow)), np.empty((n, o, oh, ow))
            per_channel = max(1, n * 2 * oh * ow * _entries_at_input(self.layers, k))
            step = max(1, int(ROW_BLOCK_ENTRIES // per_channel))
            for s in range(0, o, step):
                sl = slice(s, min(o, s + step))
                mu, grid, c, err = self._unit_rows(k, sl)
                c = np.broadcast_to(c, (n, *c.shape[1:]))
                lb = self._backward(mu, grid, c, err, k - 1, bounds, z0, z0_err, r)
                m = sl.stop - sl.start
                lo[:, sl], hi[:, sl] = lb[:, :m], -lb[:, m:]
            lo, hi = lo.reshape(n, -1), hi.reshape(n, -1)
            hi = np.maximum(hi, lo)
            bounds.append((lo, hi, *self._relax(k, lo, hi), *self._magnitudes(k, lo, hi)))
        return bounds

    def margin_lower_bounds(
        self, x: np.ndarray, target: np.ndarray, r: float, first: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """(N, K): below ``(F_t - F_j)(x')`` for every ``x'`` within ``r`` of ``x`` (+inf at ``j = t``)."""
        z0, z0_err = self.first_layer(x) if first is None else first
        bounds = self.layer_bounds(z0, z0_err, r)
        last = self.layers[-1]
        assert last.w is not None
        t = np.asarray(target, dtype=np.int64)
        mu, c, err = pair_rows(last, t, bounds[-1][6])  # type: ignore[arg-type]
        cin, h, w = last.in_shape
        mu = mu.reshape(len(t), -1, 1, 1, cin, h, w)
        lb = self._backward(
            mu,
            Grid.whole(h, w),
            c[:, :, None, None],
            err[:, :, None, None],
            len(self.alphas) - 1,
            bounds,
            z0,
            z0_err,
            r,
        )[:, :, 0, 0]
        lb[np.arange(len(t)), t] = np.inf
        return lb


def _patch_dot(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Sum over each window of ``a * m``: ``a`` (N, R, Gh, Gw, C, ph, pw), ``m`` the same or with R = 1."""
    n, r, gh, gw = a.shape[:4]
    p = int(np.prod(a.shape[4:]))
    a4 = a.reshape(n, r, gh * gw, p)
    if m.shape[1] == 1:
        m3 = m.reshape(len(m), gh * gw, p)
        if n == 1 and len(m) > 1:  # rows shared by every sample (the first step of a layer's bounds)
            return np.einsum("rgp,ngp->nrg", a4[0], m3).reshape(len(m), r, gh, gw)
        return np.einsum("nrgp,ngp->nrg", a4, m3).reshape(n, r, gh, gw)
    return np.einsum("nrgp,nrgp->nrg", a4, m.reshape(n, r, gh * gw, p)).reshape(n, r, gh, gw)


def _entries_at_input(layers: list[Layer], k: int) -> int:
    """Largest patch (entries per row and grid position) of layer ``k``'s rows on the way back to the input."""
    lay = layers[k]
    if lay.conv is None:
        return max(int(np.prod(layers[j].in_shape)) for j in range(k + 1))
    ph, pw = lay.conv.window()
    best = lay.in_shape[0] * ph * pw
    for j in range(k - 1, -1, -1):
        spec = layers[j].conv
        assert spec is not None
        wh, ww = spec.window()
        ph, pw = (ph - 1) * spec.strides[0] + wh, (pw - 1) * spec.strides[1] + ww
        best = max(best, layers[j].in_shape[0] * ph * pw)
    return best


def structured_work(layers: list[Layer]) -> float:
    """Multiply-adds per sample and radius of :class:`CrownConv`: for each hidden layer after the first its rows
    (2 per unit), then one row per logit, each pushed back to the input through patches (conv layers) or whole
    maps (dense layers). Read from the layer shapes alone, before any array is built."""
    total = 0.0
    for k in range(1, len(layers)):
        lay = layers[k]
        o, oh, ow = lay.out_shape
        if lay.conv is not None:
            rows, ph, pw = 2 * o * oh * ow, *lay.conv.window()
        else:
            rows = 2 * lay.size() if k < len(layers) - 1 else lay.size()
            ph, pw = lay.in_shape[1], lay.in_shape[2]
        for j in range(k - 1, -1, -1):
            below = layers[j]
            co = below.out_shape[0]
            total += rows * co * ph * pw * 4  # the relaxation, bias and error sums over the patch
            if below.conv is None:
                total += rows * below.size() * int(np.prod(below.in_shape))
                ph, pw = below.in_shape[1], below.in_shape[2]
                continue
            spec = below.conv
            taps = int(np.prod(spec.kernel.shape[1:]))
            total += 2 * rows * co * ph * pw * taps * (2 if j == 0 else 1)  # transposed conv (+ |.| at the input)
            wh, ww = spec.window()
            ph = min((ph - 1) * spec.strides[0] + wh, below.in_shape[1])
            pw = min((pw - 1) * spec.strides[1] + ww, below.in_shape[2])
    return float(total)
