"""Conv attributes and geometry shared by the dense, circulant and LMT bounds (ONNX layouts).

Input ``(B, C, D1, ..., Dd)``, Conv weight ``(M, C/group, k1, ..., kd)``, pads ``[x1_b, ..., x1_e, ...]``.
Output position ``o`` of a Conv reads input position ``i = o*s + j*dil - p_b`` through tap ``j``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConvGeometry:
    """One Conv on a known input: everything the dense/circulant bounds need."""

    in_spatial: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Attributes


def _per_axis(values: Sequence[int] | None, d: int, default: int, name: str) -> tuple[int, ...]:
    if values is None or len(values) == 0:
        return (default,) * d
    vals = tuple(int(v) for v in values)
    if len(vals) != d:
        raise ValueError(f"{name} has {len(vals)} entries for {d} spatial axes")
    return vals


def output_size(n: int, k: int, s: int, dil: int, pb: int, pe: int) -> int:
    """ONNX Conv output length along one axis (floor mode)."""
    return (n + pb + pe - ((k - 1) * dil + 1)) // s + 1


def resolve_pads(
    in_spatial: Sequence[int | None],
    kernel_spatial: Sequence[int],
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    auto_pad: str | bytes | None = "NOTSET",
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Begin and end pads per spatial axis, as the ONNX Conv spec defines them.

    NOTSET: the ``pads`` attribute (``[x1_b, ..., x1_e, ...]``, default 0). VALID: no padding.
    SAME_UPPER / SAME_LOWER: output ``ceil(n / s)``; total pad
    ``max(0, (out - 1) s + (k - 1) dil + 1 - n)``, the odd extra on the end (UPPER) or the begin
    (LOWER). SAME needs a known input size (ValueError otherwise). Negative pads raise ValueError.
    """
    d = len(kernel_spatial)
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    mode = (auto_pad or "NOTSET").upper()
    s = _per_axis(strides, d, 1, "strides")
    dl = _per_axis(dilations, d, 1, "dilations")
    if mode == "NOTSET":
        p = _per_axis(pads, 2 * d, 0, "pads")
        begins, ends = p[:d], p[d:]
    elif mode == "VALID":
        begins, ends = (0,) * d, (0,) * d
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        b: list[int] = []
        e: list[int] = []
        for n, k, st, di in zip(in_spatial, kernel_spatial, s, dl, strict=True):
            if n is None:
                raise ValueError(f"auto_pad={mode} needs a known input size")
            out = -(-int(n) // st)
            total = max(0, (out - 1) * st + (int(k) - 1) * di + 1 - int(n))
            small, big = total // 2, total - total // 2
            b.append(small if mode == "SAME_UPPER" else big)
            e.append(big if mode == "SAME_UPPER" else small)
        begins, ends = tuple(b), tuple(e)
    else:
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    if any(v < 0 for v in begins + ends):
        raise ValueError(f"negative pads {list(begins) + list(ends)} are not supported")
    return tuple(begins), tuple(ends)


def _check(weight: np.ndarray, groups: int) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim < 3:
        raise ValueError(f"conv weight needs rank >= 3, got shape {w.shape}")
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"{w.shape[0]} output channels are not divisible by group={groups}")
    return w


def _grouped(w: np.ndarray, groups: int) -> np.ndarray:
    """(M, C/g, k...) -> (g, M/g, C/g, k...): group ``g`` maps its own C/g inputs to its M/g outputs."""
    return w.reshape(groups, w.shape[0] // groups, *w.shape[1:])


def _dilate(wg: np.ndarray, dilations: Sequence[int]) -> np.ndarray:
    """Insert ``dil - 1`` zeros between taps along every spatial axis (the dilated kernel)."""
    d = len(dilations)
    ks = wg.shape[-d:]
    spans = tuple((k - 1) * dl + 1 for k, dl in zip(ks, dilations, strict=True))
    out = np.zeros(wg.shape[:-d] + spans, dtype=wg.dtype)
    out[(Ellipsis,) + tuple(slice(None, None, dl) for dl in dilations)] = wg
    return out


def _out_spatial(geo: ConvGeometry, ks: Sequence[int]) -> list[int]:
    return [
        output_size(n, k, s, dl, pb, pe)
        for n, k, s, dl, pb, pe in zip(
            geo.in_spatial, ks, geo.strides, geo.dilations, geo.pads_begin, geo.pads_end, strict=True
        )
    ]
