"""Building blocks shared by the family modules: orthogonal matrices and kernels, MaxMin, small nets.

Everything here is written from the papers' definitions (no code copied): per-frequency
orthogonalisation of a conv symbol materialised as a full-size circular kernel (Trockman & Kolter 2021,
Xu et al. 2022), block-convolution orthogonal kernels from symmetric projectors (Li et al. 2019), and
MaxMin / GroupSort2 (Anil, Lucas, Grosse 2019).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MaxMin(nn.Module):
    """Channel MaxMin: split in halves a, b -> (max(a, b), min(a, b)); 1-Lipschitz."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def polar(v: np.ndarray) -> np.ndarray:
    """The orthogonal (unitary) polar factor ``V (V^H V)^{-1/2}`` of a square or tall matrix, batched."""
    u, _, vh = np.linalg.svd(v, full_matrices=False)
    return u @ vh


def cayley(a: np.ndarray) -> np.ndarray:
    """``(I + S)^{-1} (I - S)`` for the skew(-Hermitian) part S of a, batched: an orthogonal (unitary) matrix."""
    s = a - np.conj(np.swapaxes(a, -1, -2))
    eye = np.eye(a.shape[-1])
    return np.linalg.solve(eye + s, eye - s)


def orthogonal_rows(n_out: int, n_in: int, seed: int) -> np.ndarray:
    """An ``n_out x n_in`` matrix with orthonormal rows (n_out <= n_in) or columns."""
    q = polar(rng(seed).standard_normal((max(n_out, n_in), max(n_out, n_in))))
    return q[:n_out, :n_in]


def fft_orthogonal_kernel(c: int, n: int, k: int, seed: int, method: str) -> np.ndarray:
    """A real (c, c, n, n) kernel whose circular conv on the n x n grid is orthogonal.

    A random k x k kernel's symbol is orthogonalised per frequency (``method``: "cayley" as in Trockman &
    Kolter 2021, or "polar" as in LOT, Xu et al. 2022) and brought back by the inverse FFT: the layer a
    user deploys after training (a full-size kernel with circular padding).
    """
    w = np.zeros((c, c, n, n))
    w[:, :, :k, :k] = rng(seed).standard_normal((c, c, k, k)) / k
    sym = np.fft.fft2(w, axes=(2, 3))  # (c, c, n, n)
    mats = np.moveaxis(sym, (0, 1), (2, 3))  # (n, n, c, c)
    ortho = cayley(mats) if method == "cayley" else polar(mats)
    back = np.fft.ifft2(np.moveaxis(ortho, (2, 3), (0, 1)), axes=(2, 3))
    assert np.abs(back.imag).max() < 1e-9
    return back.real


def bcop_kernel(c: int, taps: int, seed: int) -> np.ndarray:
    """A (c, c, taps, taps) orthogonal kernel from block convolutions (Li et al. 2019, BCOP).

    An orthogonal 1x1 matrix composed with ``taps - 1`` two-tap blocks ``[P, I - P]`` per spatial axis,
    P a symmetric projector of rank c/2: each block's symbol ``P + (I - P) z`` is unitary on |z| = 1.
    """
    r = rng(seed)
    kern = polar(r.standard_normal((c, c)))[:, :, None, None]
    for axis in (2, 3):
        for _ in range(taps - 1):
            q = polar(r.standard_normal((c, c)))[:, : c // 2]
            p = q @ q.T
            block = np.zeros((c, c, 2, 1) if axis == 2 else (c, c, 1, 2))
            block[(slice(None), slice(None), 0, 0)] = p
            block[(slice(None), slice(None), 1, 0) if axis == 2 else (slice(None), slice(None), 0, 1)] = np.eye(c) - p
            kern = compose_kernels(kern, block)
    return kern


def compose_kernels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The kernel of (correlation with a) after (correlation with b): ``C[t] = sum_{i + j = t} A[i] B[j]``."""
    ka, kb = a.shape[2:], b.shape[2:]
    out = np.zeros((a.shape[0], b.shape[1], ka[0] + kb[0] - 1, ka[1] + kb[1] - 1))
    for i0 in range(ka[0]):
        for i1 in range(ka[1]):
            for j0 in range(kb[0]):
                for j1 in range(kb[1]):
                    out[:, :, i0 + j0, i1 + j1] += a[:, :, i0, i1] @ b[:, :, j0, j1]
    return out


def circular_conv(kernel: np.ndarray) -> nn.Conv2d:
    """A torch Conv2d with ``padding_mode="circular"`` holding a materialised (odd-sized) kernel."""
    c_out, c_in, k, _ = kernel.shape
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, padding_mode="circular", bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel))
        conv.bias.copy_(torch.linspace(-0.1, 0.1, c_out))
    return conv


def linear_from(w: np.ndarray, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        if bias:
            lin.bias.copy_(torch.linspace(-0.1, 0.1, w.shape[0]))
    return lin


def orthogonal_mlp(make_square, d: int = 16, n_out: int = 10, seed: int = 0) -> nn.Module:
    """Orthogonal d x d, MaxMin, orthogonal d x d, MaxMin, orthonormal-rows head: exactly 1-Lipschitz."""
    return nn.Sequential(
        linear_from(make_square(d, seed)),
        MaxMin(),
        linear_from(make_square(d, seed + 1)),
        MaxMin(),
        linear_from(orthogonal_rows(n_out, d, seed + 2)),
    ).eval()


class FirstOutputs(nn.Module):
    """The "first channels" head of orthogonal conv nets: keep the first k outputs."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.k]


def orthogonal_conv_net(kernels: list[np.ndarray], n: int, n_out: int = 10, seed: int = 0, head: str = "linear"):
    """Circular orthogonal convs with MaxMin between, then an orthonormal head: exactly 1-Lipschitz.

    ``head="linear"``: a Linear with orthonormal rows; ``head="first"``: a square orthogonal Linear whose
    first ``n_out`` outputs are kept (a Gemm followed by a Slice in the export).
    """
    layers: list[nn.Module] = []
    for i, k in enumerate(kernels):
        layers.append(circular_conv(k))
        if i < len(kernels) - 1:
            layers.append(MaxMin())
    c = kernels[-1].shape[0]
    layers += [MaxMin(), nn.Flatten()]
    d = c * n * n
    if head == "first":
        layers += [linear_from(polar(rng(seed + 7).standard_normal((d, d)))), FirstOutputs(n_out)]
    else:
        layers.append(linear_from(orthogonal_rows(n_out, d, seed + 7)))
    return nn.Sequential(*layers).eval()


def stage_product_range(input_shape: tuple[int, ...], activations: tuple[type, ...]):
    """``true_constant`` for a Sequential of linear stages and 1-Lipschitz activations: (Jacobian lower
    estimate, product of the stages' exact norms -- each a dense-Jacobian SVD on its real input size)."""
    from tests.families import dense_jacobian_norm, jacobian_lower

    def fn(model) -> tuple[float, float]:
        x = torch.zeros(*input_shape)
        prod = 1.0
        stage: list[nn.Module] = []
        for layer in [*model, None]:
            if layer is None or isinstance(layer, activations):
                if stage:
                    seq = nn.Sequential(*stage)
                    prod *= dense_jacobian_norm(seq, tuple(x.shape))
                    with torch.no_grad():
                        x = seq(x)
                    stage = []
                if layer is not None:
                    with torch.no_grad():
                        x = layer(x)
            else:
                stage.append(layer)
        return jacobian_lower(model, input_shape), float(np.nextafter(prod, np.inf))

    return fn
