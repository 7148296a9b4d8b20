"""SLL residual blocks: SDP-based Lipschitz layers (Araujo, Havens, Delattre, Allauzen, Hu, ICLR 2023).

``y = x - 2 W T^-1 relu(W^T x + b)`` with ``T = diag(t)``, ``t_i = sum_j |W^T W|_ij q_j / q_i`` for any
``q > 0`` is 1-Lipschitz (the paper's Theorem 3: ``T - W^T W`` is then diagonally dominant, hence PSD,
and the block is the residual form of a 1-Lipschitz map). The convolutional block uses a Conv with kernel
``K`` (hidden, C, k, k) and the ConvTranspose of the same kernel; ``|W^T W|`` is replaced by the kernel's
autocorrelation summed over all shifts, which bounds every row sum of the operator's Gram matrix (the
same argument as for AOL convolutions, Prach & Lampert 2022).

For the export each block becomes a plain module with constant weights (``export_module``): the Conv
(Gemm) with ``K``, ReLU, and the ConvTranspose (Gemm) with ``K`` scaled by ``2 / t`` per hidden channel,
subtracted from the input; lipgraph's sandwich pass fuses that into one residual-sandwich node and its
rule finds the diagonal scaling again and proves the bound 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_TINY = 1e-12


def sll_scale(gram_abs: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``2 / t`` with ``t_i = sum_j |G|_ij q_j / q_i`` (``gram_abs`` = ``|G|``, hidden x hidden)."""
    q = log_q.exp()
    t = (gram_abs * q[None, :]).sum(1) / q
    return 2.0 / t.clamp_min(_TINY)


class SLLDense(nn.Module):
    """``x - W diag(2/t) relu(W^T x + b)`` on features (N, F); ``W`` is (F, hidden)."""

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, hidden) / features**0.5)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.log_q = nn.Parameter(torch.zeros(hidden))

    def scale(self, w: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        return sll_scale((w.t() @ w).abs(), log_q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.linear(x, self.weight.t(), self.bias))
        return x - F.linear(h * self.scale(self.weight, self.log_q), self.weight)

    @torch.no_grad()
    def export_module(self) -> nn.Module:
        w = self.weight.detach().double()
        s = self.scale(w, self.log_q.detach().double())
        return _ResidualDense(w.t().float(), self.bias.detach().clone(), (w * s[None, :]).float())


class SLLConv2d(nn.Module):
    """``x - K^T diag(2/t) relu(K x + b)`` on feature maps, ``K`` (hidden, C, k, k), stride 1, "same" padding."""

    def __init__(self, channels: int, hidden: int, kernel_size: int = 3):
        super().__init__()
        self.padding = kernel_size // 2
        self.kernel = nn.Parameter(
            torch.randn(hidden, channels, kernel_size, kernel_size) / (kernel_size * channels**0.5)
        )
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.log_q = nn.Parameter(torch.zeros(hidden))

    @staticmethod
    def scale(k: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        kh, kw = k.shape[-2:]
        auto = F.conv2d(k, k, padding=(kh - 1, kw - 1))  # (hidden, hidden, 2kh-1, 2kw-1): every shift
        return sll_scale(auto.abs().sum((2, 3)), log_q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.conv2d(x, self.kernel, self.bias, padding=self.padding))
        s = self.scale(self.kernel, self.log_q)
        return x - F.conv_transpose2d(h * s[None, :, None, None], self.kernel, padding=self.padding)

    @torch.no_grad()
    def export_module(self) -> nn.Module:
        k = self.kernel.detach().double()
        s = self.scale(k, self.log_q.detach().double())
        return _ResidualConv(k.float(), self.bias.detach().clone(), (k * s[:, None, None, None]).float(), self.padding)


class _ResidualDense(nn.Module):
    """Export form: ``x - relu(x Q^T + b) P^T`` with constant ``Q`` (hidden, F) and ``P`` (F, hidden)."""

    def __init__(self, q: torch.Tensor, b: torch.Tensor, p: torch.Tensor):
        super().__init__()
        self.q, self.p = nn.Linear(q.shape[1], q.shape[0]), nn.Linear(p.shape[1], p.shape[0], bias=False)
        self.q.weight.data.copy_(q)
        self.q.bias.data.copy_(b)
        self.p.weight.data.copy_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.p(F.relu(self.q(x)))


class _ResidualConv(nn.Module):
    """Export form: ``x - ConvTranspose_P(relu(Conv_K(x) + b))`` with constant kernels."""

    def __init__(self, k: torch.Tensor, b: torch.Tensor, p: torch.Tensor, padding: int):
        super().__init__()
        hidden, c, kh, kw = k.shape
        self.q = nn.Conv2d(c, hidden, (kh, kw), padding=padding)
        self.p = nn.ConvTranspose2d(hidden, c, (kh, kw), padding=padding, bias=False)
        self.q.weight.data.copy_(k)
        self.q.bias.data.copy_(b)
        self.p.weight.data.copy_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.p(F.relu(self.q(x)))
