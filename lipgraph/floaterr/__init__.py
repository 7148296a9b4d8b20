"""A proven bound on the floating-point evaluation error of the logits, per sample.

``lipgraph certify`` reads the logits from ONNX Runtime in float32, while its radii speak of the
network evaluated in real arithmetic. :func:`float_error_model` walks the model's graph once and
returns an :class:`ErrorModel` ``e(s) = c + d * s``: for every input ``x`` with ``||x||_2 = s``,
``||F_float(x) - F_real(x)||_2 <= e(s)``. The derivation (a running a-priori error analysis in the
style of Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, chapter 3, with the
propagation of earlier errors through each op's Lipschitz constant) is written out in
``docs/floating-point.md``.
"""

from __future__ import annotations

from lipgraph.floaterr.walk import FLOAT32_UNIT_ROUNDOFF, TF32_UNIT_ROUNDOFF, ErrorModel, float_error_model

__all__ = ["FLOAT32_UNIT_ROUNDOFF", "TF32_UNIT_ROUNDOFF", "ErrorModel", "float_error_model"]
