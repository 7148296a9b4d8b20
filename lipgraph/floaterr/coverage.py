"""Which ops the float error walk has no model for, and why (kept short; see docs/floating-point.md).

Every op with a bound rule either has a handler in ``lipgraph.floaterr.local.HANDLERS`` or is listed
here; ``tests/certify/test_float_error_coverage.py`` enforces it, so a new rule cannot land without
a float-error model or an entry saying why certify refuses it.
"""

from __future__ import annotations

# Ops whose bound rule always refuses (not Lipschitz, discontinuous, or only supported where a pass
# cuts them): ``lipgraph bound`` already refuses them, so certify never needs a float model.
BOUND_ALWAYS_REFUSES: frozenset[str] = frozenset(
    {
        "Exp", "Log", "Sqrt", "Reciprocal", "Sign", "Round", "Floor", "Ceil", "ArgMax", "ArgMin",
        "LpNormalization", "Tan", "Acos", "Asin", "Acosh", "Atanh", "Sinh", "Cosh", "ThresholdedRelu",
        "IsNaN", "IsInf", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
        "ReduceSumSquare", "ReduceProd", "ReduceLogSum", "MeanVarianceNormalization",
        "LogSoftmax", "SoftplusThreshold",
    }
)  # fmt: skip

# Ops ``lipgraph bound`` accepts but certify refuses: no proven float-error bound yet.
NO_FLOAT_MODEL: dict[str, str] = {
    # ONNX Runtime's CPU kernel computes the variance as mean(x^2) - mean(x)^2: its rounding error grows
    # with the square of the input's size (and can exceed epsilon), which no bound affine in ||x|| covers.
    "LayerNormalization": "ONNX Runtime's variance mean(x^2) - mean(x)^2 has a rounding error quadratic in the input",
    "InstanceNormalization": "its division by a data-dependent standard deviation is not modelled yet",
    "GroupNormalization": "its division by a data-dependent standard deviation is not modelled yet",
}
