"""Near-misses of the published 1-Lipschitz families, made at the ONNX level the way an attacker (or a
training bug) would: one weight entry or scalar nudged, a sign flipped, noise on a whole tensor, an
activation swapped for one with a negative slope, Max and Min confused, Sub's operands swapped, one
elementwise op dropped.

The structured passes (Sandwich, SLL, residual, circular conv, power series, ...) recognise these
models by their graph and certify them from the family's algebra; a mutated model keeps most of the
graph but no longer has the algebra. The verdict for each: refused with a clear error, or a bound at
least a lower estimate of the mutated model's true constant (central-difference Jacobians through
ONNX Runtime, float64 where it runs the model in double). A matcher that trusts the shape of a graph
instead of checking its numbers is found here.

Driven by one integer seed and the exporter: ``generate(seed, dynamo)`` reproduces a case. The two torch
exporters write different graphs for the same model (the dynamo exporter splits Gemm into MatMul + Add, writes
Sub/Neg/Reshape differently, folds other constants), so a matcher can hold on one and break on the other.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lipgraph import analyze
from lipgraph.errors import LipgraphError
from tests.adversarial.oracle import lower_estimate, sound

MUTATIONS = [
    "scale_entry",
    "flip_sign",
    "noise",
    "scale_tensor",
    "scalar",
    "swap_entries",
    "activation",
    "max_min",
    "sub_swap",
    "drop_op",
]
_DROPPABLE = {"Neg", "Mul", "Div", "Abs", "Relu", "Sigmoid", "Tanh", "Identity"}


@dataclass
class NearMiss:
    seed: int
    family: str
    mutation: str
    detail: str
    model: onnx.ModelProto
    x_shape: tuple[int, ...]

    dynamo: bool = False

    def __repr__(self) -> str:
        exporter = "dynamo" if self.dynamo else "legacy"
        return f"NearMiss(seed={self.seed}, {self.family} ({exporter} export), {self.mutation}: {self.detail})"


@dataclass
class Outcome:
    case: NearMiss
    outcome: str  # "bound" | "refused" | "unchanged" (the mutated model is invalid or does not run)
    bound: float | None = None
    lower: float | None = None
    ok: bool = True


@functools.cache
def _family_exports(dynamo: bool = False) -> list[tuple[str, bytes, tuple[int, ...]]]:
    """(key, serialized export, input shape) of every fast family model, built once per process and exporter."""
    import torch

    from tests.families import all_models, export_onnx

    out = []
    for fm in all_models():
        if fm.slow:
            continue
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto = export_onnx(fm.build(), fm.input_shape, dynamo=dynamo)
        out.append((fm.key, proto.SerializeToString(), fm.input_shape))
    return out


def _float_tensors(model: onnx.ModelProto) -> list[tuple[str, onnx.TensorProto]]:
    """Every float constant of the graph: initializers and Constant nodes' values, with a label."""
    found = [(f"initializer {t.name}", t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                    found.append((f"Constant {node.output[0]}", attr.t))
    return found


def _rewrite(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    new = numpy_helper.from_array(values.astype(np.float32), tensor.name)
    tensor.CopyFrom(new)


def _mutate_tensor(model: onnx.ModelProto, rng: np.random.Generator, mutation: str) -> str | None:
    tensors = _float_tensors(model)
    if mutation == "scalar":
        tensors = [(k, t) for k, t in tensors if numpy_helper.to_array(t).size == 1]
    else:
        tensors = [(k, t) for k, t in tensors if numpy_helper.to_array(t).size >= 2]
    if not tensors:
        return None
    label, tensor = tensors[int(rng.integers(len(tensors)))]
    a = numpy_helper.to_array(tensor).astype(np.float64).copy()
    flat = a.reshape(-1)
    i = int(rng.integers(flat.size))
    # small nudges probe the matchers' tolerances; large ones push the truth well past a family's certificate
    delta = float(rng.choice([-1.0, 1.0]) * rng.choice([1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0]))
    if mutation == "scale_entry":
        flat[i] = flat[i] * (1 + delta) if flat[i] != 0 else delta
        what = f"entry {i} x (1{delta:+g})"
    elif mutation == "flip_sign":
        nz = np.flatnonzero(flat)
        if nz.size == 0:
            return None
        i = int(nz[int(rng.integers(nz.size))])
        flat[i] = -flat[i]
        what = f"entry {i} negated"
    elif mutation == "noise":
        scale = min(abs(delta), 1.0) * (np.abs(flat).max() or 1.0)
        flat += rng.standard_normal(flat.size) * scale
        what = f"noise {min(abs(delta), 1.0):g} x max"
    elif mutation == "scale_tensor":
        flat *= 1 + abs(delta)
        what = f"x (1+{abs(delta):g})"
    elif mutation == "scalar":
        flat[0] = flat[0] * (1 + abs(delta)) if flat[0] != 0 else abs(delta)
        what = f"scalar {float(a.reshape(-1)[0]):g} x (1+{abs(delta):g})"
    else:  # swap_entries
        if flat.size < 2:
            return None
        j = int(rng.integers(flat.size))
        if flat[i] == flat[j]:
            return None
        flat[i], flat[j] = flat[j], flat[i]
        what = f"entries {i} and {j} swapped"
    _rewrite(tensor, flat.reshape(a.shape))
    return f"{label}: {what}"


def _mutate_graph(model: onnx.ModelProto, rng: np.random.Generator, mutation: str) -> str | None:
    nodes = list(model.graph.node)
    if mutation == "activation":
        acts = [n for n in nodes if n.op_type in ("Relu", "LeakyRelu")]
        if not acts:
            return None
        node = acts[int(rng.integers(len(acts)))]
        alpha = float(rng.choice([-0.5, -0.05, 1.5]))
        node.op_type = "LeakyRelu"
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("alpha", alpha))
        return f"{node.output[0]}: LeakyRelu(alpha={alpha:g})"
    if mutation == "max_min":
        ops = [n for n in nodes if n.op_type in ("Max", "Min")]
        if not ops:
            return None
        node = ops[int(rng.integers(len(ops)))]
        node.op_type = "Min" if node.op_type == "Max" else "Max"
        return f"{node.output[0]}: now {node.op_type}"
    if mutation == "sub_swap":
        subs = [n for n in nodes if n.op_type == "Sub" and len(n.input) == 2]
        if not subs:
            return None
        node = subs[int(rng.integers(len(subs)))]
        a, b = node.input
        node.input[0], node.input[1] = b, a
        return f"{node.output[0]}: Sub operands swapped"
    # drop_op: an elementwise op whose output replaces by its (variable) first input
    graph_outputs = {o.name for o in model.graph.output}
    inits = {t.name for t in model.graph.initializer}
    cands = [
        n
        for n in nodes
        if n.op_type in _DROPPABLE and n.output[0] not in graph_outputs and n.input and n.input[0] not in inits
    ]
    if not cands:
        return None
    node = cands[int(rng.integers(len(cands)))]
    src, dst = node.input[0], node.output[0]
    model.graph.node.remove(node)
    for other in model.graph.node:
        for k, name in enumerate(other.input):
            if name == dst:
                other.input[k] = src
    return f"{node.op_type} -> {dst} dropped"


def generate(seed: int, dynamo: bool = False) -> NearMiss | None:
    """The near-miss of ``seed``, or None when its mutation does not apply to the family model.

    Consecutive seeds walk through the family models in turn, so a run of n seeds covers each equally."""
    rng = np.random.default_rng(seed)
    exports = _family_exports(dynamo)
    key, blob, shape = exports[seed % len(exports)]
    mutation = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    model = onnx.load_from_string(blob)
    if mutation in ("activation", "max_min", "sub_swap", "drop_op"):
        detail = _mutate_graph(model, rng, mutation)
    else:
        detail = _mutate_tensor(model, rng, mutation)
    if detail is None:
        return None
    del model.graph.value_info[:]  # shapes may have changed meaning: let lipgraph infer them again
    return NearMiss(seed, key, mutation, detail, model, tuple(shape), dynamo)


def check(case: NearMiss, points: int = 3) -> Outcome:
    try:
        onnx.checker.check_model(case.model)
    except onnx.checker.ValidationError:
        return Outcome(case, "unchanged")  # the mutation made an invalid model: not a near-miss
    try:
        bound = analyze(case.model).bound
    except LipgraphError:
        return Outcome(case, "refused")
    try:
        low, f64 = lower_estimate(case.model, case.x_shape, n_points=points, seed=case.seed)
    except Exception:  # noqa: BLE001 - ONNX Runtime rejects the mutated model: nothing to compare
        return Outcome(case, "unchanged", bound=bound)
    return Outcome(case, "bound", bound, low, sound(bound, low, f64))
