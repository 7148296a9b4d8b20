"""Export a trained :class:`LipNet` to ONNX as plain layers, then let the analyzer check it.

What is exported is exactly what the analyzer bounds: Björck-orthonormalised weights are computed once
more in float64 with iterations until convergence and stored in plain ``Linear``/``Conv2d`` layers
(LNets' ``conversion.py`` does the same); MaxMin is written as ``Split -> Max, Min -> Concat`` (the
pattern lipgraph's GroupSort pass recognises) or, with ``maxmin="prelu"``, as the equivalent
``MatMul(R) -> PRelu(+-1) -> MatMul(R)`` that the generic rules already bound by 1.
The file is written to a temp file and renamed, so an interrupt leaves no half-written model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Any

import torch
from torch import nn

from lipgraph.train.archs import LipNet
from lipgraph.train.layers import BoundedConv2d, BoundedLinear, MaxMin, RotatedMaxMin, spectral_upper_cheap


def bjorck_converged(w: torch.Tensor, tol: float = 1e-13, max_iters: int = 500) -> torch.Tensor:
    """Björck iterations in float64 until ``||A A^T A - A||_max < tol`` (the polar factor)."""
    a = w.detach().to(torch.float64)
    a = a / torch.clamp(spectral_upper_cheap(a), min=1.0)
    tall = a.shape[0] > a.shape[1]
    if tall:
        a = a.t()
    for _ in range(max_iters):
        r = (a @ a.t()) @ a - a
        a = a - 0.5 * r
        if r.abs().max() < tol:
            break
    return a.t() if tall else a


def final_weight(m: BoundedLinear | BoundedConv2d) -> torch.Tensor:
    """The weight to export, float64: converged Björck for orthonormal layers, AOL's rescaling recomputed in
    float64 for AOL layers (``lipgraph.train.aol``), the raw weight otherwise."""
    if getattr(m, "aol", False):
        with torch.no_grad():
            return m.rescale(m.weight.detach().to(torch.float64))
    if not m.ortho:
        return m.weight.detach().to(torch.float64)
    mat = bjorck_converged(m.weight.reshape(m.weight.shape[0], -1))
    if isinstance(m, BoundedConv2d):
        mat = mat / m.overlap
    return mat.view_as(m.weight)


def centred_rows(w: torch.Tensor) -> torch.Tensor:
    """``w`` minus its mean row (or a bias minus its mean): every logit shifts by the same amount.

    Softmax, the argmax and every margin ``F_t - F_j`` are unchanged, so are the pairwise Lipschitz
    constants; the norm can only drop (the centring projection has norm 1). LMT's pairwise loss sees only
    row differences, so its last layer keeps a large common row that inflates the global bound and, through
    ``|W|``, the proven float error of the logits (an LMT MNIST MLP: global bound 487 -> 10.4, float
    allowance 3.65 -> 0.08, certified at 1.58 from 14% to 36%).
    """
    return w - w.mean(0, keepdim=True)


def _centre_last(model: LipNet, m: nn.Module) -> bool:
    """Centre the exported last layer of a plain (not 1-Lipschitz by construction) network."""
    return m is model.layers[-1] and isinstance(m, BoundedLinear) and not m.ortho and not getattr(m, "aol", False)


def exported_bound_estimate(model: LipNet, iters: int = 200) -> float:
    """The trainer's estimate for the weights actually exported: per layer, power iteration (float64, from
    the layer's persistent vector) on the final weight, multiplied. A LOWER estimate, never a certificate.

    For Björck layers this differs from the training-time estimate when training used few iterations.
    """
    total = 1.0
    for m in model.bounded():
        w = centred_rows(final_weight(m)) if _centre_last(model, m) else final_weight(m)
        u = m.u.detach().to(torch.float64).clone()
        for _ in range(iters):
            with torch.enable_grad():
                v = u.clone().requires_grad_(True)
                out = m.operator(v, w)
                (g,) = torch.autograd.grad(0.5 * (out * out).sum(), v)
            if not float(g.norm()) > 0:
                break
            u = g / g.norm()
        with torch.no_grad():
            total *= float(m.operator(u, w).norm() / u.norm())
    return total


def plain_model(model: LipNet, maxmin: str = "split") -> nn.Sequential:
    """A ``torch.nn.Sequential`` of stock layers computing the exported function (float32)."""
    out: list[nn.Module] = []
    for m in model.layers:
        if isinstance(m, BoundedLinear):
            lin = nn.Linear(m.in_features, m.out_features)
            w, b = final_weight(m), m.bias.detach()
            if _centre_last(model, m):
                w, b = centred_rows(w), centred_rows(b[:, None])[:, 0]
            with torch.no_grad():
                lin.weight.copy_(w.float())
                lin.bias.copy_(b)
            out.append(lin)
        elif isinstance(m, BoundedConv2d):
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
            with torch.no_grad():
                conv.weight.copy_(final_weight(m).float())
                conv.bias.copy_(m.bias.detach())
            out.append(conv)
        elif hasattr(m, "export_module"):  # e.g. SLL blocks: constant weights with the scaling folded in
            out.append(m.export_module())
        elif isinstance(m, MaxMin):
            out.append(MaxMin(_channels_before(out)) if maxmin == "split" else RotatedMaxMin(_channels_before(out)))
        else:
            out.append(m)
    return nn.Sequential(*out).eval()


def _channels_before(mods: list[nn.Module]) -> int:
    last = mods[-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def export_onnx(net: nn.Module, in_shape: tuple[int, ...], path: str, metadata: dict[str, Any],
                legacy: bool = False) -> None:
    """``torch.onnx.export`` (dynamic batch) into a temp file in the target folder, metadata added, renamed."""
    import onnx

    from lipgraph.atomic import publish

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp.onnx", dir=folder)
    os.close(fd)
    try:
        dummy = torch.zeros(2, *in_shape)  # batch 2: torch.export specialises a dynamic dim of size 1
        # the exporter prints progress on stdout; keep stdout for machine-readable output.
        quiet = logging.getLogger("torch.onnx")
        old_level = quiet.level
        quiet.setLevel(logging.ERROR)  # "torchvision is not installed" lines are noise here
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if legacy:
                torch.onnx.export(net, (dummy,), tmp, input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                                  opset_version=17)
            else:
                torch.onnx.export(net, (dummy,), tmp, input_names=["input"], output_names=["logits"],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                  external_data=False)
        quiet.setLevel(old_level)
        m = onnx.load(tmp)
        for k, v in metadata.items():
            entry = m.metadata_props.add()
            entry.key, entry.value = f"lipgraph.{k}", str(v)
        onnx.save(m, tmp)
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_with_analyzer(path: str, trainer_estimate: float, far: float = 10.0) -> tuple[float, list[str]]:
    """Run ``lipgraph.analyze`` on the exported file; warn when it is far above the trainer's estimate.

    Far above means the trainer optimised a different quantity from the one certified. Below is no sign
    of trouble: the estimate is a product of per-layer norms, and the analyzer bounds whole blocks
    (sandwiches, composed linear maps), whose constant can be far below that product.
    """
    from lipgraph.analyze import analyze

    bound = float(analyze(path).bound)
    warns: list[str] = []
    if bound > far * trainer_estimate:
        warns.append(f"the analyzer's bound {bound:.6g} is over {far:g}x the trainer's estimate "
                     f"{trainer_estimate:.6g}: certified radii will be much smaller than training aimed for")
    for w in warns:
        print(f"lipgraph train: warning: {w}", file=sys.stderr)
    return bound, warns
