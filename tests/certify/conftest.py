"""Shared fixtures of the certify tests: a small MLP trained on scikit-learn digits, exported to ONNX."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@dataclass
class Trained:
    model: object  # torch.nn.Module, eval mode, float32
    onnx_path: Path
    npz_path: Path
    x: np.ndarray  # (N, 64) float32 in [0, 1]
    y: np.ndarray  # (N,) int64


def _train(seed: int = 0) -> tuple[object, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from torch import nn

    torch.set_num_threads(1)
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(120):
        opt.zero_grad()
        # a small product-of-Frobenius-norms penalty keeps the network bound (and so the radii) reasonable
        pen = 1.0
        for m in model:
            if isinstance(m, nn.Linear):
                pen = pen * m.weight.norm()
        loss = nn.functional.cross_entropy(model(xt), yt) + 1e-3 * pen
        loss.backward()
        opt.step()
    return model.eval(), x, y


def export(model: object, example: object, path: Path) -> None:
    torch.onnx.export(model, example, str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, dynamo=False)


@pytest.fixture(scope="session")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    import warnings

    model, x, y = _train()
    folder = tmp_path_factory.mktemp("digits")
    onnx_path = folder / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(model, torch.from_numpy(x[:1]), onnx_path)
    npz_path = folder / "test.npz"
    # the last 400 samples as a "test set" (the attack test uses part of it)
    np.savez(npz_path, x=x[-400:], y=y[-400:])
    return Trained(model, onnx_path, npz_path, x[-400:], y[-400:])
