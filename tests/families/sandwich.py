"""Sandwich convolutional layers (Wang and Manchester 2023), deployed as materialised circular convs.

The paper's conv layer is ``y = sqrt(2) A^* Psi sigma(sqrt(2) Psi^-1 B x + b)`` with A and B circular
convolutions parameterised in the Fourier domain: at every frequency f of the n x n grid, the tall
matrix ``[X_f; Y_f]`` (from the DFT of a small free kernel) goes through the Cayley transform, whose
orthonormal columns give ``[A_f B_f]`` with ``A_f A_f^H + B_f B_f^H = I`` (hidden x hidden). Psi is a
positive per-channel diagonal and b a per-channel bias. Each layer is then 1-Lipschitz (the paper's
Theorem 3.3: the layer's G with ``Lambda = Psi^2`` vanishes frequency by frequency).

A user deploys the trained layer with A and B brought back to space (inverse DFT: full-size n x n
kernels with ``padding_mode="circular"``) and Psi as a per-channel scaling; that is what is exported
here. ``sandwich_layer`` also builds the near-misses of tests/families/test_sandwich_conv.py.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.families import FamilyModel, lower_and_certificate
from tests.families._common import orthogonal_rows, rng

FAMILY = "Sandwich conv (Wang & Manchester 2023)"
N = 5  # grid (the full-size kernel gets "same" circular padding: symmetric for odd N)


def cayley_tall(z: np.ndarray) -> np.ndarray:
    """Cayley transform of a batch of tall ``[X; Y]`` ((h + m) x h): a matrix with orthonormal columns.

    With ``S = X - X^H + Y^H Y`` (so ``S + S^H = 2 Y^H Y``), ``[(I + S)^-1 (I - S); -2 Y (I + S)^-1]``
    has orthonormal columns (Wang and Manchester 2023, Cayley transform of a non-square matrix)."""
    h = z.shape[-1]
    x, y = z[..., :h, :], z[..., h:, :]
    s = x - np.conj(np.swapaxes(x, -1, -2)) + np.conj(np.swapaxes(y, -1, -2)) @ y
    eye = np.eye(h)
    inv = np.linalg.inv(eye + s)
    return np.concatenate([inv @ (eye - s), -2.0 * y @ inv], axis=-2)


def sandwich_symbols(c_in: int, c_out: int, hidden: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frequency ``A_f`` (n, n, hidden, c_out) and ``B_f`` (n, n, hidden, c_in), ``[A_f B_f]`` with
    orthonormal rows; conjugate-symmetric in f (real kernels), from a 3 x 3 free kernel."""
    assert hidden <= c_in + c_out
    free = np.zeros((c_out + c_in, hidden, n, n))
    free[:, :, :3, :3] = rng(seed).standard_normal((c_out + c_in, hidden, 3, 3)) / 3
    sym = np.moveaxis(np.fft.fft2(free, axes=(2, 3)), (0, 1), (2, 3))  # (n, n, c_out + c_in, hidden)
    q = cayley_tall(sym)  # orthonormal columns
    ab = np.conj(np.swapaxes(q, -1, -2))  # (n, n, hidden, c_out + c_in), orthonormal rows
    return ab[..., :c_out], ab[..., c_out:]


def to_kernel(sym: np.ndarray) -> np.ndarray:
    """(n, n, a, b) per-frequency matrices -> the real (a, b, n, n) kernel whose circular correlation on
    the n x n grid has, at each frequency, that matrix up to conjugation and a shift phase."""
    k = np.fft.ifft2(np.moveaxis(sym, (2, 3), (0, 1)), axes=(2, 3))
    assert np.abs(k.imag).max() < 1e-9
    return k.real


def _circular(kernel: np.ndarray) -> nn.Conv2d:
    c_out, c_in, k, _ = kernel.shape
    conv = nn.Conv2d(c_in, c_out, k, padding="same", padding_mode="circular", bias=False)  # even k: uneven pads
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel))
    return conv


class SandwichConv(nn.Module):
    """``sqrt(2) A^* (psi * act(sqrt(2) (B x) / psi + bias))`` with A^*, B materialised circular convs."""

    def __init__(
        self, b_kernel, a_star_kernel, psi, bias, act=torch.relu, padding_mode="circular", psi_out=None
    ) -> None:
        super().__init__()
        self.conv_b = _circular(b_kernel)
        self.conv_a = _circular(a_star_kernel)
        if padding_mode != "circular":
            self.conv_b.padding_mode = self.conv_a.padding_mode = padding_mode
        self.psi = nn.Parameter(torch.as_tensor(psi, dtype=torch.float32).reshape(1, -1, 1, 1))
        psi_out = psi if psi_out is None else psi_out  # the scaling on M's side (a near-miss may differ)
        self.psi_out = nn.Parameter(torch.as_tensor(psi_out, dtype=torch.float32).reshape(1, -1, 1, 1))
        bias = torch.as_tensor(bias, dtype=torch.float32)
        self.bias = nn.Parameter(bias.reshape(1, -1, 1, 1) if bias.ndim == 1 else bias[None])
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(2**0.5 * self.conv_b(x) / self.psi + self.bias)
        return 2**0.5 * self.conv_a(h * self.psi_out)


def sandwich_layer(c_in: int, c_out: int, hidden: int, n: int, seed: int, **kw) -> SandwichConv:
    """One layer of the family (``kw`` overrides: psi, psi_out, bias, act, padding_mode, a_scale)."""
    a_f, b_f = sandwich_symbols(c_in, c_out, hidden, n, seed)
    a_star = to_kernel(np.conj(np.swapaxes(a_f, -1, -2))) * kw.pop("a_scale", 1.0)  # (c_out, hidden, n, n)
    g = rng(seed + 100)
    psi = kw.pop("psi", np.exp(0.5 * g.standard_normal(hidden)))
    bias = kw.pop("bias", 0.1 * g.standard_normal(hidden))
    return SandwichConv(to_kernel(b_f), a_star, psi, bias, **kw)


def conv_net(seed: int = 60, c: int = 2, width: int = 4, hidden: int = 6, n: int = N, n_out: int = 10) -> nn.Module:
    """Two Sandwich conv layers and an orthonormal-rows head: 1-Lipschitz by the paper's theorem."""
    layers = [sandwich_layer(c, width, hidden, n, seed), sandwich_layer(width, width, hidden, n, seed + 1)]
    head = nn.Linear(width * n * n, n_out)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(orthogonal_rows(n_out, width * n * n, seed + 2)))
    return nn.Sequential(*layers, nn.Flatten(), head).eval()


class Scale(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c * x


GAMMA = 2.0


def conv_dense_net(seed: int = 70, c: int = 2, width: int = 4, hidden: int = 6, n: int = N) -> nn.Module:
    """A Sandwich conv layer, then a dense Sandwich layer and an orthonormal head, with input and output
    scaled by sqrt(gamma): gamma-Lipschitz (the paper's Lipschitz-bound parameter)."""
    from tests.families.lbdn import SandwichDense

    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(16, 10)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(orthogonal_rows(10, 16, seed + 2)))
    return nn.Sequential(
        Scale(GAMMA**0.5),
        sandwich_layer(c, width, hidden, n, seed),
        nn.Flatten(),
        SandwichDense(width * n * n, 16, 20, gen),
        head,
        Scale(GAMMA**0.5),
    ).eval()


MODELS = [
    FamilyModel(FAMILY, "conv", conv_net, (1, 2, N, N), lower_and_certificate((1, 2, N, N))),
    FamilyModel(
        FAMILY,
        "conv+dense",
        conv_dense_net,
        (1, 2, N, N),
        lower_and_certificate((1, 2, N, N), certificate=GAMMA),
        certificate=GAMMA,
    ),
]
