"""The rule of ``lipgraph:LinearRegion`` (fused by lipgraph/passes/linear_regions.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipgraph.errors import Refuse
from lipgraph.norms import EPS64, NormBound
from lipgraph.norms.dense import spectral_norm
from lipgraph.rules.registry import LIPGRAPH_DOMAIN, Bound, RuleContext, rule

# Ops whose constant operand only shifts the output: zeroed in the probe, so it computes A x exactly.
_SHIFTS = {"Add", "Sub", "Where", "Concat"}


# Ops whose constant inputs broadcast against the data: they get the trailing probe axis (size 1).
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Where"}
_LAYOUT = {"Reshape", "Squeeze", "Unsqueeze", "Flatten"}
# Work per probe chunk: columns times the largest intermediate tensor.
_CHUNK_ELEMENTS = 1 << 24


def _probe_model(ctx: RuleContext, magnitudes: bool, batch: int) -> onnx.ModelProto:
    """The region as a float64 model computing ``A X`` for ``batch`` probe columns at once.

    Every tensor gets a trailing axis of length ``batch``: the region's ops move, mask and combine only
    the original axes, so they act on each column independently once their parameters are adjusted
    (constants that broadcast get a trailing axis of 1, layout changes reshape to the known output
    shape plus the probe axis, negative axes are made positive). Constant shifts are zeroed, so the
    model computes the linear part exactly. With ``magnitudes``, every constant factor is replaced by
    its absolute value and every Sub/Neg by Add/Identity: a term-by-term bound of each sum.
    """
    attrs = ctx.node.attrs
    x0, y = ctx.node.inputs[0], ctx.node.outputs[0]
    consts: dict[str, np.ndarray] = attrs["consts"]
    shapes: dict[str, tuple[int, ...]] = attrs["shapes"]
    nodes, inits = [], {}
    for k, (op, ins, outs, a) in enumerate(attrs["region"]):
        ins = list(ins)
        a = {key: v for key, v in a.items() if not isinstance(v, onnx.AttributeProto)}
        rank = len(shapes[next(i for i in ins if i in shapes)])
        if op in _LAYOUT:
            shape_name = f"shape{k}"
            inits[shape_name] = np.array([*shapes[outs[0]], batch], dtype=np.int64)
            nodes.append(helper.make_node("Reshape", [ins[0], shape_name], list(outs), name=f"n{k}"))
            continue
        for j, name in enumerate(ins):
            if not name or name not in consts:
                continue
            val = np.asarray(consts[name])
            if val.dtype.kind == "f":
                val = val.astype(np.float64)
                if op in _SHIFTS:
                    val = np.zeros_like(val)
                elif magnitudes:
                    val = np.abs(val)
            if op in _BROADCASTING:
                val = val.reshape(val.shape + (1,))
            elif op == "Concat":
                val = np.zeros(val.shape + (batch,), dtype=np.float64)
            inits[f"c{k}_{j}"] = val
            ins[j] = f"c{k}_{j}"
        if magnitudes and op in ("Sub", "Neg"):
            op = "Add" if op == "Sub" else "Identity"
        if op == "Transpose":
            perm = [int(v) for v in a.get("perm", list(range(rank))[::-1])]
            a["perm"] = [*perm, rank]
        elif op in ("Gather", "Concat"):
            a["axis"] = int(a.get("axis", 0)) % rank
        nodes.append(helper.make_node(op, ins, list(outs), name=f"n{k}", **a))
    graph = helper.make_graph(
        nodes,
        "region",
        [helper.make_tensor_value_info(x0, TensorProto.DOUBLE, [*shapes[x0], batch])],
        [helper.make_tensor_value_info(y, TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(attrs["opset"]))])
    model.ir_version = 8
    return model


def _matrix(ctx: RuleContext, magnitudes: bool) -> np.ndarray:
    """``A`` (or its magnitude bound): the region run on the basis vectors, chunk by chunk, by
    onnxruntime in float64 (onnx's reference evaluator when a kernel is missing; these ops only move,
    mask and add values, where the two agree)."""
    shapes: dict[str, tuple[int, ...]] = ctx.node.attrs["shapes"]
    x0 = ctx.node.inputs[0]
    n = int(np.prod(shapes[x0]))
    biggest = max(int(np.prod(sh)) for sh in shapes.values())
    batch = max(1, min(n, _CHUNK_ELEMENTS // max(biggest, 1)))
    model = _probe_model(ctx, magnitudes, batch)
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

    cols = []
    for start in range(0, n, batch):
        probe = np.zeros((n, batch), dtype=np.float64)
        width = min(batch, n - start)
        probe[start + np.arange(width), np.arange(width)] = 1.0
        out = run(probe.reshape(*shapes[x0], batch)).astype(np.float64)
        cols.append(out.reshape(-1, batch)[:, :width])
    return np.concatenate(cols, axis=1)


def _signed(ctx: RuleContext) -> bool:
    """Whether the region subtracts or has a negative factor (else every term is >= 0 on basis vectors,
    no cancellation happens, and the magnitudes are the computed values themselves)."""
    consts: dict[str, np.ndarray] = ctx.node.attrs["consts"]
    for op, ins, _, _ in ctx.node.attrs["region"]:
        if op in ("Sub", "Neg"):
            return True
        if op in ("Mul", "Div"):
            for name in ins:
                val = consts.get(name)
                if val is not None and np.asarray(val).dtype.kind == "f" and np.any(np.asarray(val) < 0):
                    return True
    return False


def _block_norm(a: np.ndarray) -> NormBound:
    """``||a||_2`` as the max over the blocks of ``a`` (rows and columns that share no nonzero entry).

    Regions act per channel, so ``a`` is block diagonal up to permutations (exactly: a permutation of
    rows and columns keeps the norm, and a block-diagonal matrix has the norm of its largest block);
    one SVD per small block instead of one of the whole matrix.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m, n = a.shape
    rows, cols = np.nonzero(a)
    if rows.size == 0:
        return NormBound(0.0, "zero", 0.0)
    # Bipartite graph: rows are vertices 0..m-1, columns m..m+n-1.
    adj = coo_matrix((np.ones(rows.size), (rows, cols + m)), shape=(m + n, m + n))
    count, labels = connected_components(adj, directed=False)
    if count == 1:
        return spectral_norm(a)
    best = NormBound(0.0, "zero", 0.0)
    for comp in np.unique(labels[cols + m]):
        r = np.flatnonzero(labels[:m] == comp)
        c = np.flatnonzero(labels[m:] == comp)
        nb = spectral_norm(a[np.ix_(r, c)])
        if nb.value > best.value:
            best = nb
    return best


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
        a_hat = _matrix(ctx, magnitudes=False)
        a_maj = _matrix(ctx, magnitudes=True) if _signed(ctx) else np.abs(a_hat)
    except Exception as exc:  # noqa: BLE001 - the probe could not run: no bound from it
        raise Refuse(f"cannot evaluate the fused linear region ({type(exc).__name__}: {exc})") from None
    if not (np.all(np.isfinite(a_hat)) and np.all(np.isfinite(a_maj))):
        raise Refuse("the fused linear region has non-finite coefficients")
    d = len(ctx.node.attrs["region"]) + 1
    gamma = d * EPS64 / (1 - d * EPS64)
    nb = _block_norm(a_hat)
    allowance = gamma * (1 + gamma) * float(np.linalg.norm(a_maj))
    value = float(np.nextafter(nb.value + 2 * allowance, np.inf))
    n_ops = len(ctx.node.attrs["region"])
    return Bound(
        value * lin,
        f"exact norm of a fused linear region ({n_ops} ops, {a_hat.shape[1]} inputs)",
        factor=value,
        lower=nb.lower,
    )
