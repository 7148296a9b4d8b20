"""AOL layers: almost-orthogonal, 1-Lipschitz by a closed-form rescaling (Prach & Lampert, ECCV 2022).

For any matrix ``P``, with ``D = diag(d)`` and ``d_i = (sum_j |P^T P|_ij)^(-1/2)``, ``||P D||_2 <= 1``
(Prach & Lampert 2022, Thm. 1: a Gershgorin/Schur-test argument on ``D P^T P D``). The layers below apply
that rescaling to their raw parameters in every forward, so the map is 1-Lipschitz whatever the weights;
the export writes the rescaled weight into a plain ``Gemm``/``Conv``, whose exact norm lipgraph's rules bound.

* :class:`AOLLinear`: ``d`` from the column sums of ``|W^T W|``.
* :class:`AOLConv2d` with stride 1: the operator's ``P^T P`` couples input channels ``i, j`` at a spatial
  shift ``s`` through the kernel cross-correlation ``sum_{o, p} K[o, i, p] K[o, j, p + s]``; with zero
  padding each entry of the true ``P^T P`` is at most that in absolute value (border rows lose terms), so
  ``d_i`` from the sum over ``j`` and all shifts is a valid (per input channel) AOL rescaling.
* :class:`AOLConv2d` with ``kernel == stride`` and no padding (the downsampling layer): the patches do not
  overlap, so the operator is block diagonal with the reshaped kernel ``(c_out, c_in k k)`` as every
  block; the dense rule applies per column of that matrix (one factor per input channel and tap).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipgraph.train.layers import BoundedConv2d, BoundedLinear

_TINY = 1e-12  # a zero column / channel gets a finite factor (its weight is zero anyway)


def aol_dense_scale(w: torch.Tensor) -> torch.Tensor:
    """``d_i = (sum_j |W^T W|_ij)^(-1/2)`` for the columns of ``w`` (out, in)."""
    return (w.t() @ w).abs().sum(1).clamp_min(_TINY).rsqrt()


def aol_conv_scale(k: torch.Tensor) -> torch.Tensor:
    """Per-input-channel AOL factors of a stride-1 convolution kernel ``k`` (out, in, kh, kw)."""
    kt = k.transpose(0, 1)  # (in, out, kh, kw)
    kh, kw = k.shape[-2:]
    # cross-correlation of every input channel's filter bank with every other one at every shift
    kk = F.conv2d(kt, kt, padding=(kh - 1, kw - 1))  # (in, in, 2kh-1, 2kw-1)
    return kk.abs().sum((1, 2, 3)).clamp_min(_TINY).rsqrt()


class AOLLinear(BoundedLinear):
    """A linear layer rescaled by AOL; 1-Lipschitz for any parameters."""

    aol = True

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, ortho=False)
        w = torch.empty(out_features, in_features)
        nn.init.orthogonal_(w)  # AOL's rescaling leaves an orthogonal matrix as it is: start there
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.zero_()

    def rescale(self, w: torch.Tensor) -> torch.Tensor:
        return w * aol_dense_scale(w)[None, :]

    def effective_weight(self) -> torch.Tensor:
        return self.rescale(self.weight)


class AOLConv2d(BoundedConv2d):
    """A convolution rescaled by AOL: stride 1 with "same" padding, or ``kernel == stride`` (downsampling)."""

    aol = True

    def __init__(self, in_shape: tuple[int, int, int], out_channels: int, kernel_size: int, stride: int = 1):
        downsample = stride > 1
        if downsample and kernel_size != stride:
            raise ValueError("a strided AOL convolution needs kernel_size == stride (non-overlapping patches)")
        padding = 0 if downsample else kernel_size // 2
        super().__init__(in_shape, out_channels, kernel_size, stride=stride, padding=padding, ortho=False)
        self.downsample = downsample
        c_in = in_shape[0]
        with torch.no_grad():
            self.bias.zero_()
            if downsample:  # an orthogonal (c_out, c_in k k) matrix: one orthogonal block per patch
                w = torch.empty(out_channels, c_in * kernel_size * kernel_size)
                nn.init.orthogonal_(w)
                self.weight.copy_(w.view_as(self.weight))
            else:  # the centre tap orthogonal, the others zero: close to an orthogonal operator at the start
                w = torch.empty(out_channels, c_in)
                nn.init.orthogonal_(w)
                self.weight.zero_()
                self.weight[:, :, kernel_size // 2, kernel_size // 2] = w

    def rescale(self, k: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            mat = k.reshape(k.shape[0], -1)
            return (mat * aol_dense_scale(mat)[None, :]).view_as(k)
        return k * aol_conv_scale(k)[None, :, None, None]

    def effective_weight(self) -> torch.Tensor:
        return self.rescale(self.weight)
