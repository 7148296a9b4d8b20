"""The linear part of an ONNX ``Conv`` applied to a batch of inputs, in float64 numpy (no bias).

Used to push the standard basis through a chain's linear segment (``lipgraph.chain``), so a small conv
layer becomes the dense matrix the per-pair bounds need. Only 2-D convolutions, any pads (``auto_pad`` SAME
resolved to explicit pads as the ONNX spec defines them), strides, dilations and groups; anything else is
refused with a reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ConvNotSupported(ValueError):
    """This Conv's configuration is not handled here (the caller then treats the model as no chain)."""


def conv2d_linear(x: np.ndarray, weight: np.ndarray, attrs: dict[str, Any]) -> tuple[np.ndarray, int]:
    """``Conv(x, weight)`` without bias for ``x`` of shape (batch, C, H, W); returns (output, inner size).

    The inner size (input channels per group x kernel area) is the length of each output's dot product,
    for the caller's rounding bound."""
    if x.ndim != 4 or weight.ndim != 4:
        raise ConvNotSupported("only 2-D Conv is expanded")
    m, c, h, w = x.shape
    n_out, c_per_group, kh, kw = weight.shape
    group = int(attrs.get("group", 1))
    kernel = [int(v) for v in attrs.get("kernel_shape", (kh, kw))]
    sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
    dh, dw = (int(v) for v in attrs.get("dilations", (1, 1)))
    pt, pl, pb, pr = explicit_pads(attrs, (h, w), (kh, kw))
    if kernel != [kh, kw] or group < 1 or c != c_per_group * group or n_out % group:
        raise ConvNotSupported("Conv weight does not fit its input or attributes")
    if min(sh, sw, dh, dw) < 1 or min(pt, pl, pb, pr) < 0:
        raise ConvNotSupported("Conv with non-positive strides/dilations or negative pads")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ConvNotSupported("Conv output is empty")
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros((m, n_out, oh, ow), dtype=np.float64)
    per_group = n_out // group
    for g in range(group):
        xs = xp[:, g * c_per_group : (g + 1) * c_per_group]
        wg = weight[g * per_group : (g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
                out[:, g * per_group : (g + 1) * per_group] += np.einsum("bchw,oc->bohw", patch, wg[:, :, i, j])
    return out, c_per_group * kh * kw


def explicit_pads(
    attrs: dict[str, Any], in_hw: tuple[int, int], kernel_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pads of a 2-D Conv: its ``pads`` (NOTSET), none (VALID), or the ONNX SAME rule
    (output ``ceil(n / s)``, the odd extra pad at the end for SAME_UPPER, at the start for SAME_LOWER)."""
    from lipgraph.norms.conv_geometry import resolve_pads

    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad.startswith("SAME") and any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
        # the spec's rule is not what every runtime does (ONNX Runtime refuses it): no guess
        raise ConvNotSupported(f"Conv auto_pad={auto_pad} with dilations")
    try:
        begins, ends = resolve_pads(
            in_hw, kernel_hw, attrs.get("strides"), attrs.get("dilations"), attrs.get("pads"), attrs.get("auto_pad")
        )
    except ValueError as exc:
        raise ConvNotSupported(f"Conv pads: {exc}") from None
    return int(begins[0]), int(begins[1]), int(ends[0]), int(ends[1])
