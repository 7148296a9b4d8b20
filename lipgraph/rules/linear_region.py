"""The rule of ``lipgraph:LinearRegion`` (fused by lipgraph/passes/linear_regions.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipgraph.errors import Refuse
from lipgraph.norms import EPS64
from lipgraph.norms.dense import spectral_norm
from lipgraph.rules.registry import LIPGRAPH_DOMAIN, Bound, RuleContext, rule

# Ops whose constant operand only shifts the output: zeroed in the probe, so it computes A x exactly.
_SHIFTS = {"Add", "Sub", "Where", "Concat"}


def _probe_model(ctx: RuleContext, magnitudes: bool) -> tuple[onnx.ModelProto, str, tuple[int, ...]]:
    """The region as a float64 model computing ``A x`` (or ``|A|``-style magnitudes: every constant
    factor replaced by its absolute value and every Sub/Neg by Add/Identity, which bounds each
    intermediate sum of products term by term)."""
    attrs = ctx.node.attrs
    x0, y = ctx.node.inputs[0], ctx.node.outputs[0]
    consts: dict[str, np.ndarray] = attrs["consts"]
    nodes, inits = [], {}
    for k, (op, ins, outs, a) in enumerate(attrs["region"]):
        ins = list(ins)
        for j, name in enumerate(ins):
            if not name or name not in consts:
                continue
            val = np.asarray(consts[name])
            new = f"c{k}_{j}"
            if val.dtype.kind == "f":
                val = val.astype(np.float64)
                if op in _SHIFTS:
                    val = np.zeros_like(val)
                elif magnitudes:
                    val = np.abs(val)
            inits[new] = val
            ins[j] = new
        if magnitudes and op in ("Sub", "Neg"):
            op = "Add" if op == "Sub" else "Identity"
        clean = {key: v for key, v in a.items() if not isinstance(v, onnx.AttributeProto)}
        nodes.append(helper.make_node(op, ins, list(outs), name=f"n{k}", **clean))
    shape = tuple(attrs["shapes"][x0])
    graph = helper.make_graph(
        nodes,
        "region",
        [helper.make_tensor_value_info(x0, TensorProto.DOUBLE, list(shape))],
        [helper.make_tensor_value_info(y, TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(attrs["opset"]))])
    model.ir_version = 8
    return model, x0, shape


def _columns(model: onnx.ModelProto, x0: str, shape: tuple[int, ...]) -> np.ndarray:
    """``[f(e_1), ..., f(e_n)]`` run by onnxruntime in float64 (onnx's reference evaluator when a kernel
    is missing; these ops only move, mask and add values, where the two agree)."""
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(sess.run(None, {x0: x})[0])
    except Exception:  # noqa: BLE001 - no double kernel for some op in this onnxruntime
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(model)

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(ev.run(None, {x0: x})[0])

    n = int(np.prod(shape))
    cols = []
    for j in range(n):
        e = np.zeros(n, dtype=np.float64)
        e[j] = 1.0
        cols.append(run(e.reshape(shape)).astype(np.float64).ravel())
    return np.stack(cols, axis=1)


@rule("LinearRegion", domain=LIPGRAPH_DOMAIN)
def linear_region(ctx: RuleContext) -> Bound:
    """A fused region of gathers, masks, sums and constant scalings: ``||A||_2``, exact up to rounding.

    The region is affine, ``y = A x + b``; its constant shifts are zeroed, so running it on the basis
    vectors in float64 gives the columns of ``A`` (computed ``A_hat``). Each entry is a sum of products
    of at most D factors (D = the number of ops), so ``|A - A_hat| <= gamma_D |A|_maj`` entrywise, where
    ``|A|_maj`` is the same run with every constant replaced by its magnitude and every subtraction by an
    addition; the bound is ``||A_hat||_2`` (SVD, with its allowance) plus ``gamma_D (1 + gamma_D)
    ||A|_maj||_F``. Source: Higham, "Accuracy and Stability of Numerical Algorithms", 2002 (sec. 3.1).
    """
    _, lin = ctx.single_variable_input()
    try:
        model, x0, shape = _probe_model(ctx, magnitudes=False)
        a_hat = _columns(model, x0, shape)
        mmodel, _, _ = _probe_model(ctx, magnitudes=True)
        a_maj = _columns(mmodel, x0, shape)
    except Exception as exc:  # noqa: BLE001 - the probe could not run: no bound from it
        raise Refuse(f"cannot evaluate the fused linear region ({type(exc).__name__}: {exc})") from None
    if not (np.all(np.isfinite(a_hat)) and np.all(np.isfinite(a_maj))):
        raise Refuse("the fused linear region has non-finite coefficients")
    d = len(ctx.node.attrs["region"]) + 1
    gamma = d * EPS64 / (1 - d * EPS64)
    nb = spectral_norm(a_hat)
    allowance = gamma * (1 + gamma) * float(np.linalg.norm(a_maj))
    value = float(np.nextafter(nb.value + 2 * allowance, np.inf))
    n_ops = len(ctx.node.attrs["region"])
    return Bound(
        value * lin,
        f"exact norm of a fused linear region ({n_ops} ops, {a_hat.shape[1]} inputs)",
        factor=value,
        lower=nb.lower,
    )
