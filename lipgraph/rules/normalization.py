"""Normalization layers (docs/operators.md "Normalization").

BatchNormalization at inference is a per-channel affine map. The data-dependent normalizations
(Instance/Layer/Group/RMS) divide by a spread of the input that can be as small as ``sqrt(eps)``; their
only global bound is ``max|gamma| / sqrt(eps)``, reported with a warning.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.norms import EPS64
from lipgraph.rules.pooling import output_unused
from lipgraph.rules.registry import Bound, RuleContext, rule


def _up(x: float) -> float:
    return float(np.nextafter(x * (1 + 8 * EPS64), np.inf))


def _const_input(ctx: RuleContext, i: int, what: str) -> np.ndarray:
    if ctx.is_variable(i):
        raise Refuse(f"the {what} depends on the input (only constant {what}s are supported)")
    val = ctx.const(i)
    if val is None:
        raise Refuse(f"the {what} has no known value")
    return np.asarray(val, dtype=np.float64)


def _data_variable_only(ctx: RuleContext) -> float:
    """The bound of input 0, the only input allowed to depend on the model input."""
    if not ctx.is_variable(0):
        raise Refuse("the data input does not depend on the model input but another input does")
    lin = ctx.input_bounds[0]
    assert lin is not None
    return lin


def _only_first_output(ctx: RuleContext, op: str) -> list[float]:
    """Bounds for the outputs: every output past the first must be unused (statistics outputs)."""
    for i in range(1, len(ctx.node.outputs)):
        if not output_unused(ctx, i):
            raise Refuse(f"{op}'s statistics output '{ctx.node.outputs[i]}' is used by the graph")
    return [0.0] * (len(ctx.node.outputs) - 1)


@rule("BatchNormalization")
def batch_normalization(ctx: RuleContext) -> Bound:
    """BatchNormalization at inference: ``max_c |gamma_c| / sqrt(var_c + eps)``. Exact (a diagonal map).

    ``y = gamma (x - mean) / sqrt(var + eps) + beta`` with constant statistics; the max runs over every
    entry (per channel, or per element for the old ``spatial = 0`` form). Training mode (opset 14+
    ``training_mode = 1``, opset <= 6 ``is_test = 0``, or any statistics output) normalizes by
    the batch's own statistics and is refused. Folding into an adjacent Conv/Gemm is done by a pass;
    this rule is the standalone case. Source: docs/operators.md
    """
    lin = _data_variable_only(ctx)
    if int(ctx.attr("training_mode", 0)):
        raise Refuse("BatchNormalization in training mode uses batch statistics; export in eval mode")
    if ctx.opset < 7 and not int(ctx.attr("is_test", 0)):
        raise Refuse("BatchNormalization with is_test = 0 (training) uses batch statistics; export in eval mode")
    if any(o for o in ctx.node.outputs[1:]):
        # Before opset 14 the running/saved statistics outputs are what marks training mode.
        raise Refuse("BatchNormalization with statistics outputs is the training form; export in eval mode")
    extra = [0.0] * (len(ctx.node.outputs) - 1)
    gamma = _const_input(ctx, 1, "scale")
    var = _const_input(ctx, 4, "variance")
    _const_input(ctx, 2, "bias")
    _const_input(ctx, 3, "mean")
    eps = float(ctx.attr("epsilon", float(np.float32(1e-5))))  # ONNX's default: a float32 attribute
    denom = var + eps
    if denom.size and (not np.all(np.isfinite(denom)) or np.any(denom <= 0)):
        raise Refuse("variance + epsilon is not positive")
    if not np.all(np.isfinite(gamma)):
        raise Refuse("the scale has non-finite values")
    try:
        g, d = np.broadcast_arrays(np.abs(gamma), denom)
    except ValueError:  # a malformed model (ONNX wants one value per channel in each)
        raise Refuse(f"scale of shape {gamma.shape} and variance of shape {denom.shape} do not match") from None
    s = g / np.sqrt(d)
    factor = _up(float(s.max())) if s.size else 0.0
    return Bound([factor * lin, *extra], "max |gamma| / sqrt(var + eps)", factor=factor,
                 lower=float(s.max()) if s.size else 0.0)


_VACUOUS = (
    "{op} divides by the input's own spread; its only global bound is max|gamma|/sqrt(eps) = {f:.4g}, "
    "attained near constant inputs, which makes the certificate vacuous (docs/operators.md)"
)


def _vacuous(ctx: RuleContext, scale_input: int | None, eps: float, op: str) -> Bound:
    """``max|gamma| / sqrt(eps)`` for ``x -> gamma * P x / sqrt(|P x|^2 / d + eps) + beta``.

    With ``z = P x`` (centering, norm <= 1; or the identity for RMS), ``g(z) = z / sqrt(|z|^2/d + eps)``
    has Jacobian ``(I - z z^T / (d q)) / sqrt(q)``, ``q = |z|^2/d + eps``, whose eigenvalues are
    ``1/sqrt(q)`` and ``eps / q^(3/2)``, both ``<= 1/sqrt(eps)``. Groups are independent (block diagonal:
    max), and the elementwise scale multiplies by at most ``max|gamma|``.
    """
    lin = _data_variable_only(ctx)
    extra = _only_first_output(ctx, op)
    if not eps > 0 or not math.isfinite(eps):
        raise Refuse(f"{op} with epsilon = {eps:g} is not Lipschitz (it divides by the input's spread)")
    gmax = 1.0
    if scale_input is not None and ctx.has_input(scale_input):
        gamma = _const_input(ctx, scale_input, "scale")
        if not np.all(np.isfinite(gamma)):
            raise Refuse("the scale has non-finite values")
        gmax = float(np.abs(gamma).max()) if gamma.size else 0.0
    for i in range(scale_input + 1 if scale_input is not None else 1, len(ctx.node.inputs)):
        if ctx.is_variable(i):
            raise Refuse("a bias that depends on the input is not supported")
    factor = _up(gmax / math.sqrt(eps))
    return Bound([factor * lin, *extra], "max|gamma| / sqrt(eps) (vacuous)", factor=factor,
                 warnings=[_VACUOUS.format(op=op, f=factor)])


@rule("InstanceNormalization")
def instance_normalization(ctx: RuleContext) -> Bound:
    """InstanceNormalization: ``max|gamma| / sqrt(eps)`` (sound, attained near constant inputs; vacuous
    in practice, reported with a warning). Source: docs/operators.md
    """
    return _vacuous(ctx, 1, float(ctx.attr("epsilon", 1e-5)), "InstanceNormalization")


@rule("LayerNormalization")
def layer_normalization(ctx: RuleContext) -> Bound:
    """LayerNormalization: ``max|gamma| / sqrt(eps)`` (sound, attained near constant inputs: checked 629.6
    vs 631.1 at d = 64; vacuous, reported with a warning). The Mean / InvStdDev outputs must be unused.
    Source: docs/operators.md
    """
    return _vacuous(ctx, 1, float(ctx.attr("epsilon", 1e-5)), "LayerNormalization")


@rule("GroupNormalization", since=18)
def group_normalization(ctx: RuleContext) -> Bound:
    """GroupNormalization: ``max|gamma| / sqrt(eps)`` over the per-group (opset 18) or per-channel
    (opset 21) scale; sound and vacuous, reported with a warning. Source: docs/operators.md.
    """
    return _vacuous(ctx, 1, float(ctx.attr("epsilon", 1e-5)), "GroupNormalization")


@rule("RMSNormalization", since=23)
def rms_normalization(ctx: RuleContext) -> Bound:
    """RMSNormalization: ``max|gamma| / sqrt(eps)`` (the same argument without centering); sound and
    vacuous, reported with a warning. Source: docs/operators.md (LayerNorm-like ops).
    """
    return _vacuous(ctx, 1, float(ctx.attr("epsilon", 1e-5)), "RMSNormalization")


@rule("MeanVarianceNormalization")
def mean_variance_normalization(ctx: RuleContext) -> Bound:
    """MeanVarianceNormalization: refused. It divides by the standard deviation with no epsilon in its
    definition, so it is not Lipschitz near constant inputs. Source: docs/operators.md.
    """
    raise Refuse("MeanVarianceNormalization divides by the input's standard deviation without epsilon "
                 "(not Lipschitz near constant inputs)")
