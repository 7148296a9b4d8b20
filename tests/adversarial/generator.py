"""The adversarial generator: random small models over every op lipgraph accepts, then mutated the
way an attacker would (declarations that lie, unsorted nodes, symbolic sizes), each checked against
a lower estimate of its true Lipschitz constant computed from ONNX Runtime's own outputs.

Everything is driven by one integer seed, so a failure is reproduced by ``generate(seed)`` alone.
The verdict for a model: refused with a clear error, or a bound at least the lower estimate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from lipgraph import analyze
from lipgraph.errors import LipgraphError, ModelLoadError
from tests.adversarial.cases import shuffled
from tests.adversarial.layers import LAYERS, Builder, Shape
from tests.adversarial.oracle import lower_estimate, sound
from tests.helpers.onnx_oracle import make_model, runner

OPSETS = [9, 10, 11, 13, 17, 18, 20]
MUTATIONS = ["none", "none", "lie_shape", "lie_type", "lie_value_info", "honest_output", "shuffle", "symbolic"]


@dataclass
class Case:
    seed: int
    model: onnx.ModelProto  # what lipgraph is given
    truth: onnx.ModelProto  # the same function, honestly declared, at the concrete size (for the oracle)
    x_shape: Shape
    mutation: str
    layers: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Case(seed={self.seed}, x={self.x_shape}, mutation={self.mutation}, layers={self.layers})"


def _x_shape(rng: np.random.Generator) -> Shape:
    rank = int(rng.choice([2, 3, 4, 4]))
    if rank == 2:
        return (1, int(rng.integers(1, 9)))
    if rank == 3:
        return (1, int(rng.integers(1, 4)), int(rng.integers(1, 7)))
    return (1, int(rng.choice([1, 2, 4])), int(rng.integers(1, 5)), int(rng.integers(1, 5)))


def _out_shape(b: Builder, x_shape: Shape, out: str) -> Shape | None:
    """Run the partial model in ONNX Runtime: its output shape, or None when it is invalid or empty."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = make_model(list(b.nodes), [("x", list(x_shape))], [out], dict(b.inits), opset=b.opset)
            y = runner(m)({"x": np.zeros(x_shape, np.float32)})[0]
    except Exception:  # noqa: BLE001 - an attribute combination ONNX Runtime rejects: drop the layer
        return None
    if y.size == 0 or y.size > 256 or y.ndim == 0:
        return None
    return tuple(int(d) for d in y.shape)


def generate(seed: int, n_layers: int | None = None) -> Case:
    rng = np.random.default_rng(seed)
    opset = int(rng.choice(OPSETS))
    x_shape = _x_shape(rng)
    b = Builder(rng, opset)
    cur, shape = "x", x_shape
    want = n_layers if n_layers is not None else int(rng.integers(1, 4))
    tries = 0
    while len(b.desc) < 8 and want > 0 and tries < 12:
        tries += 1
        mark_nodes, mark_inits, mark_desc = len(b.nodes), dict(b.inits), len(b.desc)
        layer = LAYERS[int(rng.integers(len(LAYERS)))]
        try:
            out = layer(b, cur, shape)
        except (ValueError, IndexError):
            out = None
        new_shape = _out_shape(b, x_shape, out) if out is not None else None
        if out is None or new_shape is None:
            del b.nodes[mark_nodes:]
            b.inits = mark_inits
            del b.desc[mark_desc:]
            continue
        cur, shape = out, new_shape
        want -= 1
    if cur == "x":  # nothing applied: one Relu, so that every case has a node
        cur = b.node("Relu", ["x"])[0]
    truth = make_model(b.nodes, [("x", list(x_shape))], [cur], b.inits, opset=opset)
    mutation = str(rng.choice(MUTATIONS))
    model = _mutate(truth, mutation, rng, x_shape)
    return Case(seed, model, truth, x_shape, mutation, list(b.desc))


def _intermediates(model: onnx.ModelProto) -> list[str]:
    final = model.graph.output[0].name
    return [o for n in model.graph.node for o in n.output if o and o != final]


def _mutate(truth: onnx.ModelProto, mutation: str, rng: np.random.Generator, x_shape: Shape) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(truth)
    if mutation == "shuffle":
        return shuffled(m, int(rng.integers(1 << 30)))
    if mutation == "symbolic":
        dims = m.graph.input[0].type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i > 0 and rng.random() < 0.6:
                d.Clear()
                d.dim_param = f"S{i}"
        return m
    inner = _intermediates(m)
    if mutation in ("lie_shape", "lie_type") and rng.random() < 0.25:
        inner = [m.graph.output[0].name]  # the certified output's own declaration
    if not inner and mutation != "none":
        return m
    if mutation in ("lie_shape", "lie_value_info", "honest_output"):
        inferred = onnx.shape_inference.infer_shapes(m)
        known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        name = str(rng.choice(inner))
        vi = known.get(name)
        if vi is None:
            return m
        decl = onnx.ValueInfoProto()
        decl.CopyFrom(vi)
        if name == m.graph.output[0].name:
            m.graph.output[0].CopyFrom(decl)
            if mutation == "honest_output":
                return m
            decl = m.graph.output[0]
        if mutation != "honest_output":
            dims = decl.type.tensor_type.shape.dim
            if len(dims):
                d = dims[int(rng.integers(len(dims)))]
                v = d.dim_value if d.HasField("dim_value") else 1
                d.Clear()
                d.dim_value = max(1, v - 1) if v > 1 else v + 1
        if name != m.graph.output[0].name:
            (m.graph.value_info if mutation == "lie_value_info" else m.graph.output).append(decl)
    elif mutation == "lie_type":
        name = str(rng.choice(inner))
        if name == m.graph.output[0].name:
            m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
        else:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, None))
    return m


@dataclass
class Verdict:
    case: Case
    outcome: str  # "bound", "refused", "malformed", "no-oracle"
    bound: float | None = None
    lower: float | None = None
    ok: bool = True
    detail: str = ""


def check(case: Case, n_points: int = 2) -> Verdict:
    """Bound (or refusal) of ``case.model`` against the lower estimate of ``case.truth``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            low, f64 = lower_estimate(case.truth, case.x_shape, n_points=n_points, seed=case.seed)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime cannot run it: nothing to compare
            return Verdict(case, "no-oracle", detail=type(exc).__name__)
        try:
            a = analyze(case.model)
        except ModelLoadError as exc:
            lie = case.mutation.startswith("lie")
            return Verdict(case, "malformed", lower=low, ok=lie, detail=str(exc).splitlines()[0])
        except LipgraphError as exc:
            return Verdict(case, "refused", lower=low, detail=str(exc).splitlines()[-1])
    ok = sound(a.bound, low, f64)
    detail = "" if ok else "UNSOUND"
    if ok and case.mutation in ("shuffle", "honest_output"):
        # the same function, honestly declared or merely reordered: the same bound
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            same = analyze(case.truth).bound
        ok = same == a.bound
        detail = "" if ok else f"bound {a.bound!r} differs from the plain model's {same!r}"
    return Verdict(case, "bound", a.bound, low, ok, detail)
