"""Backward vectors of conv neurons as patches: the pieces of the structured local bound (crown_conv).

A row of CROWN's backward pass that starts at one unit of a conv layer is nonzero only on that unit's
receptive field in every earlier layer. Rows are therefore held as *patches*: an array of shape
``(N, R, Gh, Gw, C, ph, pw)`` where ``(Gh, Gw)`` is the grid of output positions the rows start from and
``(C, ph, pw)`` the window they cover in the current layer; the window of grid position ``(i, j)`` starts at
map row ``i S_h - P_h`` and column ``j S_w - P_w`` (the same idea as the "patches" mode of auto_LiRPA,
Xu et al., NeurIPS 2020). Window entries outside the map (the layer's zero padding) are kept at zero. A
whole-map row (a dense layer's) is the grid ``1 x 1`` with the window equal to the map.

Everything here is float64 numpy; the transposed convolution is a plain sum of products (one per kernel tap
and input channel), so its rounding is bounded by Higham's ``gamma_n |nu| |W|`` for any summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BLOCK_ENTRIES = 2**18  # float64 entries of one block of a transposed conv's columns (2 MiB: cache-sized)


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution's geometry (ONNX attributes, explicit pads) and its constant kernel."""

    kernel: np.ndarray  # (O, C / group, kh, kw)
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]
    group: int

    def window(self) -> tuple[int, int]:
        """Extent of one output's receptive field in the input (dilation included)."""
        _, _, kh, kw = self.kernel.shape
        return (kh - 1) * self.dilations[0] + 1, (kw - 1) * self.dilations[1] + 1

    def terms(self) -> int:
        """An upper bound of the products in one entry of the transposed conv (its rounding count)."""
        o, _, kh, kw = self.kernel.shape
        return (o // self.group) * kh * kw


@dataclass
class Grid:
    """Where a patch's windows sit: ``size`` grid positions, window origin ``i * step - offset``."""

    size: tuple[int, int]
    step: tuple[int, int]
    offset: tuple[int, int]
    window: tuple[int, int]

    @staticmethod
    def whole(h: int, w: int) -> Grid:
        return Grid((1, 1), (1, 1), (0, 0), (h, w))

    def is_whole(self, h: int, w: int) -> bool:
        return self.size == (1, 1) and self.offset == (0, 0) and self.window == (h, w)


def unfold(m: np.ndarray, grid: Grid) -> np.ndarray:
    """``m`` (N, C, H, W) read at every window of ``grid``: (N, Gh, Gw, C, ph, pw), zero outside the map."""
    n, c, h, w = m.shape
    if grid.is_whole(h, w):
        return m[:, None, None]
    (gh, gw), (sh, sw), (oh, ow), (ph, pw) = grid.size, grid.step, grid.offset, grid.window
    top, left = max(0, oh), max(0, ow)
    bottom = max(0, (gh - 1) * sh - oh + ph - h)
    right = max(0, (gw - 1) * sw - ow + pw - w)
    mp = np.pad(m, ((0, 0), (0, 0), (top, bottom), (left, right)))
    view = sliding_window_view(mp, (ph, pw), axis=(2, 3))  # (N, C, H', W', ph, pw)
    r0, c0 = top - oh, left - ow
    view = view[:, :, r0 : r0 + (gh - 1) * sh + 1 : sh, c0 : c0 + (gw - 1) * sw + 1 : sw]
    return view.transpose(0, 2, 3, 1, 4, 5)


def in_map(grid: Grid, h: int, w: int) -> np.ndarray:
    """(1, Gh, Gw, 1, ph, pw): 1.0 where a window entry lies inside an ``h x w`` map."""
    return unfold(np.ones((1, 1, h, w)), grid)


def kernel_rows(spec: ConvSpec, channels: int) -> np.ndarray:
    """(O, C, ph, pw): each output channel's kernel laid out on its window over all ``C`` input channels."""
    o, cg, kh, kw = spec.kernel.shape
    ph, pw = spec.window()
    dh, dw = spec.dilations
    out = np.zeros((o, channels, ph, pw))
    per = o // spec.group
    for g in range(spec.group):
        out[g * per : (g + 1) * per, g * cg : (g + 1) * cg, ::dh, ::dw] = spec.kernel[g * per : (g + 1) * per]
    return out


def conv_transpose(nu: np.ndarray, kernel: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """The transposed conv (no padding) of windows ``nu`` (B, O, ph, pw) with ``kernel``:
    (B, C, (ph - 1) s + window). Entry by entry a sum of at most ``spec.terms()`` products: one matrix product
    over the output channels per group, then the kernel taps added into place (channels last, so each add is
    a contiguous block)."""
    b, o, ph, pw = nu.shape
    _, cg, kh, kw = kernel.shape
    (sh, sw), (dh, dw) = spec.strides, spec.dilations
    wh, ww = spec.window()
    out = np.zeros((b, (ph - 1) * sh + wh, (pw - 1) * sw + ww, cg * spec.group))
    per = o // spec.group
    last = np.ascontiguousarray(nu.transpose(0, 2, 3, 1))  # (B, ph, pw, O)
    step = max(1, BLOCK_ENTRIES // (ph * pw * kh * kw * cg))  # windows per block: its columns stay in cache
    for g in range(spec.group):
        k = kernel[g * per : (g + 1) * per].transpose(0, 2, 3, 1).reshape(per, kh * kw * cg)
        for start in range(0, b, step):
            cols = (last[start : start + step, ..., g * per : (g + 1) * per] @ k).reshape(-1, ph, pw, kh, kw, cg)
            block = out[start : start + step]
            for i in range(kh):
                rows = slice(i * dh, i * dh + (ph - 1) * sh + 1, sh)
                for j in range(kw):
                    block[:, rows, j * dw : j * dw + (pw - 1) * sw + 1 : sw, g * cg : (g + 1) * cg] += cols[
                        :, :, :, i, j
                    ]
    return out.transpose(0, 3, 1, 2)


def patch_transpose(
    data: np.ndarray, grid: Grid, kernel: np.ndarray, spec: ConvSpec, in_hw: tuple[int, int]
) -> tuple[np.ndarray, Grid]:
    """Patches over a conv's output pushed back to its input (``kernel``: the kernel or its absolute value).
    Entries outside the input map are dropped (they would meet the zero padding); a whole-map patch stays
    whole."""
    n, r, gh, gw, o, ph, pw = data.shape
    t = conv_transpose(data.reshape(-1, o, ph, pw), kernel, spec)
    c, th, tw = t.shape[1:]
    (sh, sw), (pt, pl) = spec.strides, spec.pads[:2]
    new = Grid(
        (gh, gw), (grid.step[0] * sh, grid.step[1] * sw), (grid.offset[0] * sh + pt, grid.offset[1] * sw + pl), (th, tw)
    )
    t = t.reshape(n, r, gh, gw, c, th, tw)
    h, w = in_hw
    if grid.size == (1, 1):  # crop / pad to the whole map
        whole = np.zeros((n, r, 1, 1, c, h, w))
        y0, x0 = -new.offset[0], -new.offset[1]  # map coordinates of the window's first entry
        ys, xs = max(0, y0), max(0, x0)
        ye, xe = min(h, y0 + th), min(w, x0 + tw)
        if ye > ys and xe > xs:
            whole[..., ys:ye, xs:xe] = t[..., ys - y0 : ye - y0, xs - x0 : xe - x0]
        return whole, Grid.whole(h, w)
    return t * in_map(new, h, w)[:, None], new
