"""Trainable layers whose Lipschitz constant the trainer estimates (and, for GroupSort nets, fixes).

* :class:`BoundedLinear` / :class:`BoundedConv2d`: plain layers that own a persistent power-iteration
  vector of the TRUE operator's input shape (LMT, Tsuzuku et al. 2018, sec. 4;).
  With ``ortho=True`` the effective weight is Björck-orthonormalised (Anil et al. 2019) so the layer is
  1-Lipschitz by construction; for a convolution the orthonormalised reshaped kernel is further divided
  by the LMT overlap factor ``sqrt(prod ceil(k/s))``, which makes the conv operator 1-Lipschitz
  (docs/operators.md, conv bound 1).
* :class:`MaxMin`: ``cat(max(a, b), min(a, b))`` over the two channel halves, 1-Lipschitz and
  gradient-norm preserving (Anil et al. 2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def spectral_upper_cheap(w: torch.Tensor) -> torch.Tensor:
    """A cheap sound upper bound of ``||w||_2``: ``sqrt(||w||_1 ||w||_inf)`` (Hölder), detached."""
    a = w.detach().abs()
    return torch.sqrt(a.sum(0).max() * a.sum(1).max())


def bjorck(w: torch.Tensor, iters: int, beta: float = 0.5, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Order-1 Björck orthonormalisation ``A <- (1+beta) A - beta A A^T A`` (LNets ``l2_ball.py``).

    The input is first divided by ``scale``: by default a sound upper bound of its spectral norm (when
    above 1) so that every singular value starts in (0, 1] and the iteration converges towards the
    polar factor. That Hölder bound is ~sqrt(n) too large for a near-orthogonal n x n matrix, so few
    iterations start from singular values ~1/sqrt(n) and end far from 1; training passes a power-iteration
    estimate of ``||w||_2`` instead (deel-lip's spectral-norm-then-Björck), under which order 1 still
    converges for estimates down to ``||w||_2 / sqrt(3)``.
    Differentiable: the gradient flows through every iteration, as in LNets' ``BjorckLinear``.
    """
    if scale is None:
        scale = torch.clamp(spectral_upper_cheap(w), min=1.0)
    a = w / scale
    tall = a.shape[0] > a.shape[1]
    if tall:
        a = a.t()
    for _ in range(iters):
        # a is wide (rows <= cols): the small Gram a a^T keeps the cost at rows^2 * cols
        a = (1.0 + beta) * a - beta * (a @ a.t()) @ a
    return a.t() if tall else a


def conv_overlap_factor(kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> float:
    """LMT's overlap factor ``sqrt(prod_d ceil(span_d / s_d))``: how often one input element is reused."""
    prod = 1
    for k, s, d in zip(kernel, stride, dilation, strict=True):
        span = d * (k - 1) + 1
        prod *= math.ceil(span / s)
    return math.sqrt(prod)


class _PowerIterMixin:
    """Persistent power-iteration vector ``u`` (a buffer, never touched by the optimiser)."""

    u: torch.Tensor

    def operator(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def effective_weight(self) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def power_step(self, w: torch.Tensor, iters: int = 1) -> None:
        """``u <- A^T A u / ||A^T A u||`` (the adjoint through autograd, so any stride/padding is exact)."""
        for _ in range(iters):
            with torch.enable_grad():
                v = self.u.detach().clone().requires_grad_(True)
                out = self.operator(v, w)
                (g,) = torch.autograd.grad(0.5 * (out * out).sum(), v)
            n = g.norm()
            if not (torch.isfinite(n) and n > 0):
                return
            self.u.copy_(g / n)

    def lipschitz_estimate(self, update: bool = True) -> torch.Tensor:
        """``||A u|| / ||u||`` for the current weight, differentiable in the weight.

        With ``update`` one power-iteration step ``u <- A^T A u / ||.||`` is taken first (no grad),
        so over training ``u`` tracks the top right singular vector: one step per training step,
        as LMT's ``PowerIteration`` hook does. This is a LOWER estimate of the norm, never a bound.
        """
        w = self.effective_weight()
        if update:
            self.power_step(w.detach())
        u = self.u.detach()
        return self.operator(u, w).norm() / u.norm().clamp_min(1e-12)


class _RawScaleMixin:
    """A persistent right singular vector ``v_raw`` of the raw (reshaped) weight, for Björck's pre-scaling.

    One power-iteration step per training forward (no grad), as torch's ``spectral_norm``; the estimate
    ``||W v_raw||`` (detached: the polar factor does not depend on the scale) divides ``W`` before Björck.
    It only steers training; the exported weight is re-orthonormalised to convergence from the raw one.
    """

    v_raw: torch.Tensor
    training: bool

    def _init_raw(self, mat: torch.Tensor) -> None:
        self.register_buffer("v_raw", F.normalize(torch.randn(mat.shape[1]), dim=0))
        self._raw_step(mat, 20)

    @torch.no_grad()
    def _raw_step(self, mat: torch.Tensor, iters: int = 1) -> None:
        v = self.v_raw
        for _ in range(iters):
            g = mat.t() @ (mat @ v)
            n = g.norm()
            if not (torch.isfinite(n) and n > 0):
                return
            v = g / n
        self.v_raw.copy_(v)

    def _raw_scale(self, mat: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._raw_step(mat.detach())
        return (mat.detach() @ self.v_raw).norm().clamp_min(1e-12)


class BoundedLinear(nn.Linear, _PowerIterMixin, _RawScaleMixin):
    def __init__(self, in_features: int, out_features: int, ortho: bool = False, bjorck_iters: int = 10):
        super().__init__(in_features, out_features)
        self.ortho = ortho
        self.bjorck_iters = bjorck_iters
        if ortho:
            nn.init.orthogonal_(self.weight)
            nn.init.zeros_(self.bias)
            self._init_raw(self.weight.detach())
        self.register_buffer("u", F.normalize(torch.randn(in_features), dim=0))

    def effective_weight(self) -> torch.Tensor:
        if not self.ortho:
            return self.weight
        return bjorck(self.weight, self.bjorck_iters, scale=self._raw_scale(self.weight))

    def operator(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class BoundedConv2d(nn.Conv2d, _PowerIterMixin, _RawScaleMixin):
    """A Conv2d whose power-iteration vector has the layer's true input shape ``(1, C, H, W)``."""

    def __init__(self, in_shape: tuple[int, int, int], out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, ortho: bool = False, bjorck_iters: int = 10):
        super().__init__(in_shape[0], out_channels, kernel_size, stride=stride, padding=padding)
        self.in_shape = tuple(in_shape)
        self.ortho = ortho
        self.bjorck_iters = bjorck_iters
        self.overlap = conv_overlap_factor(self.kernel_size, self.stride, self.dilation)
        if ortho:
            w = torch.empty(out_channels, self.weight[0].numel())
            nn.init.orthogonal_(w)
            with torch.no_grad():
                self.weight.copy_(w.view_as(self.weight))
                self.bias.zero_()
            self._init_raw(w)
        self.register_buffer("u", F.normalize(torch.randn(1, *in_shape).flatten(), dim=0).view(1, *in_shape))

    def out_shape(self) -> tuple[int, int, int]:
        h, w = self.in_shape[1:]
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw) = self.stride, self.padding
        return (self.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def effective_weight(self) -> torch.Tensor:
        if not self.ortho:
            return self.weight
        raw = self.weight.reshape(self.out_channels, -1)
        mat = bjorck(raw, self.bjorck_iters, scale=self._raw_scale(raw))
        return (mat / self.overlap).view_as(self.weight)

    def operator(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaxMin(nn.Module):
    """``cat(max(a, b), min(a, b))`` with ``a, b`` the two halves of axis 1 (Anil et al.'s MaxMin).

    Exported by torch as ``Split -> Max, Min -> Concat``, the form lipgraph's GroupSort pass
    recognises as 1-Lipschitz.
    """

    def __init__(self, channels: int | None = None):
        super().__init__()
        # a known channel count makes the halves static: the legacy exporter then writes a constant Split,
        # not Slices whose ends it computes from the runtime shape (which the analyzer cannot match)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is None:
            a, b = x.chunk(2, dim=1)
        else:
            half = self.channels // 2
            a, b = torch.split(x, [half, half], dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class RotatedMaxMin(nn.Module):
    """The same function as :class:`MaxMin` written as ``R . PRelu(slopes +-1) . R`` (export form).

    With ``u = (a+b)/sqrt2``, ``v = (a-b)/sqrt2``: ``max = (u+|v|)/sqrt2``, ``min = (u-|v|)/sqrt2``, so
    ``MaxMin(z) = R prelu(R z)`` with ``R = [[I, I], [I, -I]]/sqrt2`` (orthogonal, symmetric) and
    PRelu slope 1 on the first half (identity) and -1 on the second (``|.|``). Every op here has a
    Lipschitz rule with factor 1 in the generic analyzer (PRelu ``max(1, |slope|) = 1``; an orthogonal
    MatMul has norm 1), so the analyzer proves 1-Lipschitz without pattern recognition.
    """

    def __init__(self, channels: int):
        super().__init__()
        h = channels // 2
        eye = torch.eye(h)
        r = torch.cat([torch.cat([eye, eye], 1), torch.cat([eye, -eye], 1)], 0) / math.sqrt(2.0)
        self.register_buffer("r", r)
        self.register_buffer("slope", torch.cat([torch.ones(h), -torch.ones(h)]))

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        # Channel mixing as MatMul on the last axis (Transpose around it for feature maps): ops the
        # analyzer bounds exactly without a Conv rule.
        if x.dim() == 2:
            return x @ self.r.t()
        return (x.movedim(1, -1) @ self.r.t()).movedim(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(F.prelu(self._mix(x), self.slope))
