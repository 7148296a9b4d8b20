"""Shape and indexing ops against the exact norm of their dense matrices (SPEC sec. 4 "Structure", sec. 9).

Every op here is linear and every rule claims exactness, so: exact <= bound <= exact * (1 + 1e-6).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lipgraph import analyze
from lipgraph.errors import UnsupportedModelError
from tests.helpers.onnx_oracle import dense_matrix, exact_norm, make_model, one_node

EXACT = 1 + 1e-6
I64 = np.int64


def _check(model: onnx.ModelProto, x_shape: list[int], output_index: int = 0) -> tuple[float, float]:
    a = analyze(model)
    bound = a.bound_of(model.graph.output[output_index].name)
    exact = exact_norm(model, x_shape, output_index=output_index)
    assert exact * (1 - 1e-7) <= bound <= exact * EXACT, (bound, exact)
    return bound, exact


# ------------------------------------------------------------------------------ Pad
PAD_CASES = [
    # (x shape, pads, mode, opset)
    ([1, 2, 5], [0, 0, 2, 0, 0, 3], "constant", 13),
    ([1, 2, 5], [0, 0, 2, 0, 0, 3], "reflect", 13),
    ([1, 2, 5], [0, 0, 4, 0, 0, 4], "reflect", 13),  # pad = n - 1: an element reflected twice
    ([1, 2, 5], [0, 0, 3, 0, 0, 1], "edge", 13),
    ([1, 1, 3, 4], [0, 0, 1, 2, 0, 0, 2, 1], "reflect", 13),  # two axes: counts multiply
    ([1, 1, 3, 4], [0, 0, 2, 2, 0, 0, 2, 2], "edge", 13),
    ([1, 1, 1, 4], [0, 0, 0, 3, 0, 0, 0, 3], "edge", 13),
    ([1, 2, 5], [0, 0, 2, 0, 0, 1], "reflect", 9),  # pads as an attribute (opset < 11)
    ([1, 2, 5], [0, 0, 1, 0, 0, 1], "edge", 7),
    ([1, 2, 6], [0, 0, 3, 0, 0, 2], "wrap", 19),
    ([1, 2, 5], [0, 0, -1, 0, 0, 2], "constant", 13),  # a negative pad crops
    ([1, 2, 5], [0, 0, -1, 0, 0, 2], "edge", 13),
    # wrap with a crop: onnxruntime crops first, so the kept elements repeat more (found by fuzzing)
    ([4, 2, 3], [0, 0, 3, 2, 2, -1], "wrap", 19),
    ([3, 2, 3], [-1, 2, 0, 1, -1, -1], "wrap", 19),
]


@pytest.mark.parametrize("x_shape, pads, mode, opset", PAD_CASES)
def test_pad(x_shape: list[int], pads: list[int], mode: str, opset: int) -> None:
    if opset >= 11:
        model = one_node("Pad", x_shape, {"pads": np.array(pads, dtype=I64)}, opset=opset, mode=mode)
    else:
        model = one_node("Pad", x_shape, opset=opset, mode=mode, pads=pads)
    _check(model, x_shape)


def test_pad_with_axes_opset18() -> None:
    x_shape = [1, 2, 3, 5]
    consts = {"pads": np.array([2, 1], dtype=I64), "value": np.array(0.0, dtype=np.float32),
              "axes": np.array([-1], dtype=I64)}
    model = one_node("Pad", x_shape, consts, opset=18, mode="reflect")
    bound, _ = _check(model, x_shape)
    assert bound == pytest.approx(np.sqrt(2), rel=1e-9)  # element 1 appears twice, as does element 3


def test_pad_constant_value() -> None:
    model = one_node("Pad", [1, 4], {"pads": np.array([0, 1, 0, 2], dtype=I64),
                                     "value": np.array(5.0, dtype=np.float32)}, opset=13)
    _check(model, [1, 4])


# ------------------------------------------------------------------------------ Gather
GATHER_CASES = [
    ([2, 5], [0, 3, 1], 1),
    ([2, 5], [0, -1, 2, 0, 0], 1),  # repeats (0 three times): sqrt(3)
    ([2, 5], [-1, 4], 1),  # -1 and 4 are the same element: sqrt(2)
    ([4, 3], [[0, 1], [1, -4]], 0),  # 2-D indices; -4 is 0
    ([2, 3, 4], 2, 2),  # a scalar index drops the axis
    ([2, 3, 4], [-2, -2, -2], -1),
]


@pytest.mark.parametrize("x_shape, idx, axis", GATHER_CASES)
def test_gather(x_shape: list[int], idx, axis: int) -> None:
    model = one_node("Gather", x_shape, {"i": np.array(idx, dtype=I64)}, axis=axis)
    _check(model, x_shape)


def test_gather_of_constant_table_by_data_refused() -> None:
    nodes = [helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
             helper.make_node("Gather", ["T", "xi"], ["y"], name="lookup")]
    model = make_model(nodes, [("x", [1, 3])], ["y"], {"T": np.ones((4, 2), np.float32)})
    with pytest.raises(UnsupportedModelError):
        analyze(model)


# ------------------------------------------------------------------------------ Expand / Tile
@pytest.mark.parametrize("x_shape, target", [([1, 3], [4, 3]), ([3, 1], [3, 5]), ([3], [2, 2, 3]), ([2, 3], [2, 3]),
                                             ([2, 1, 3], [1, 4, 1])])
def test_expand(x_shape: list[int], target: list[int]) -> None:
    model = one_node("Expand", x_shape, {"shape": np.array(target, dtype=I64)})
    _check(model, x_shape)


@pytest.mark.parametrize("x_shape, reps", [([2, 3], [1, 1]), ([2, 3], [3, 1]), ([1, 2, 2], [2, 1, 3])])
def test_tile(x_shape: list[int], reps: list[int]) -> None:
    model = one_node("Tile", x_shape, {"r": np.array(reps, dtype=I64)})
    _check(model, x_shape)


# ------------------------------------------------------------------------------ Slice / Split
SLICE_CASES = [
    ([2, 6], [1], [5], [1], None),
    ([2, 6], [5], [0], [1], [-2]),  # negative step
    ([2, 3, 6], [0, 1], [2, 6], [1, 2], [1, 2]),
    ([2, 6], [-4], [100], [-1], None),
]


@pytest.mark.parametrize("x_shape, starts, ends, axes, steps", SLICE_CASES)
def test_slice(x_shape, starts, ends, axes, steps) -> None:
    consts = {"s": np.array(starts, I64), "e": np.array(ends, I64), "a": np.array(axes, I64)}
    if steps is not None:
        consts["st"] = np.array(steps, I64)
    model = one_node("Slice", x_shape, consts)
    _check(model, x_shape)


def test_slice_opset9_attributes() -> None:
    model = one_node("Slice", [2, 6], opset=9, starts=[1], ends=[4], axes=[1])
    _check(model, [2, 6])


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_each_output(opset: int) -> None:
    x_shape = [2, 7]
    if opset >= 18:
        model = one_node("Split", x_shape, opset=opset, n_outputs=3, axis=1, num_outputs=3)
    elif opset >= 13:
        model = one_node("Split", x_shape, {"split": np.array([2, 4, 1], I64)}, opset=opset, n_outputs=3, axis=1)
    else:
        model = one_node("Split", x_shape, opset=opset, n_outputs=3, axis=1, split=[2, 4, 1])
    a = analyze(model)
    for k, out in enumerate(model.graph.output):
        exact = exact_norm(model, x_shape, output_index=k)
        assert exact <= a.bound_of(out.name) <= exact * EXACT


# ------------------------------------------------------------------------------ permutations
PERM_CASES = [
    ("Transpose", [2, 3, 4], {}, {"perm": [2, 0, 1]}, 13),
    ("Reshape", [2, 3, 4], {"shape": np.array([4, -1], I64)}, {}, 13),
    ("Reshape", [2, 3, 4], {"shape": np.array([0, 12], I64)}, {}, 13),
    ("Flatten", [2, 3, 4], {}, {"axis": 2}, 13),
    ("Flatten", [2, 3, 4], {}, {"axis": 0}, 9),
    ("Squeeze", [2, 1, 4], {"axes": np.array([1], I64)}, {}, 13),
    ("Squeeze", [2, 1, 4], {}, {"axes": [1]}, 11),
    ("Unsqueeze", [2, 4], {"axes": np.array([0, 3], I64)}, {}, 13),
    ("Identity", [2, 4], {}, {}, 13),
    ("DepthToSpace", [1, 8, 2, 3], {}, {"blocksize": 2, "mode": "CRD"}, 13),
    ("DepthToSpace", [1, 8, 2, 3], {}, {"blocksize": 2, "mode": "DCR"}, 13),
    ("SpaceToDepth", [1, 2, 4, 6], {}, {"blocksize": 2}, 13),
    ("Dropout", [2, 4], {}, {"ratio": 0.3}, 9),
    ("Dropout", [2, 4], {"ratio": np.array(0.5, np.float32)}, {}, 13),
    ("Cast", [2, 4], {}, {"to": TensorProto.DOUBLE}, 13),
]


@pytest.mark.parametrize("op, x_shape, consts, attrs, opset", PERM_CASES)
def test_permutations_have_norm_one(op: str, x_shape, consts, attrs, opset: int) -> None:
    model = one_node(op, x_shape, consts, opset=opset, **attrs)
    if op == "Cast":
        model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    bound, exact = _check(model, x_shape)
    assert bound == pytest.approx(1.0)


def test_dropout_training_mode_refused() -> None:
    consts = {"ratio": np.array(0.5, np.float32), "mode": np.array(True)}
    model = one_node("Dropout", [2, 4], consts, opset=13)
    with pytest.raises(UnsupportedModelError, match="Dropout"):
        analyze(model)


def test_gather_matrix_matches_rule_count() -> None:
    # The dense matrix of a Gather has 0/1 columns with disjoint rows: its norm is sqrt(max repeat).
    model = one_node("Gather", [1, 4], {"i": np.array([3, 3, 1, 3, 0], I64)}, axis=1)
    m = dense_matrix(model, [1, 4])
    assert np.linalg.svd(m, compute_uv=False)[0] == pytest.approx(np.sqrt(3))
    _check(model, [1, 4])


# ------------------------------------------------------------------------------ seeded fuzz
def _random_structural_model(rng: np.random.Generator) -> tuple[onnx.ModelProto, list[int]]:
    r = int(rng.integers(1, 4))
    xs = [int(rng.integers(1, 5)) for _ in range(r)]
    op = str(rng.choice(["Pad", "Gather", "Slice", "Tile"]))
    if op == "Pad":
        mode = str(rng.choice(["reflect", "edge", "constant", "wrap"]))
        hi = [d if mode == "reflect" else d + 1 for d in xs]
        pads = [int(rng.integers(-1 if d > 1 else 0, h)) for d, h in zip(xs, hi, strict=True)]
        pads += [int(rng.integers(-1 if d > 1 else 0, h)) for d, h in zip(xs, hi, strict=True)]
        return one_node("Pad", xs, {"p": np.array(pads, I64)}, opset=19, mode=mode), xs
    if op == "Gather":
        ax = int(rng.integers(-r, r))
        d = xs[ax]
        idx_shape = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(0, 3))))
        return one_node("Gather", xs, {"i": rng.integers(-d, d, size=idx_shape).astype(I64)}, axis=ax), xs
    if op == "Slice":
        ax = int(rng.integers(0, r))
        d = xs[ax]
        consts = {"s": np.array([rng.integers(-d - 1, d + 1)], I64), "e": np.array([rng.integers(-d - 1, d + 2)], I64),
                  "a": np.array([ax], I64), "st": np.array([rng.choice([-2, -1, 1, 2])], I64)}
        return one_node("Slice", xs, consts), xs
    return one_node("Tile", xs, {"r": rng.integers(1, 3, size=r).astype(I64)}), xs


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_structural_rules_are_exact(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    checked = 0
    for _ in range(20):
        model, xs = _random_structural_model(rng)
        try:
            exact = exact_norm(model, xs)
        except Exception:  # noqa: BLE001 - onnxruntime rejects this configuration (e.g. empty reflect)
            continue
        bound = analyze(model).bound
        if exact == 0.0:  # an empty slice: any bound is sound, the rule's 1 included
            continue
        assert exact * (1 - 1e-7) <= bound <= exact * EXACT, (helper.printable_graph(model.graph), bound, exact)
        checked += 1
    assert checked >= 8


# ------------------------------------------------------------------------------ TopK
def _topk_model(k: int, **attrs: int) -> onnx.ModelProto:
    node = helper.make_node("TopK", ["x", "k"], ["y", "idx"], name="topk", axis=-1, **attrs)
    return make_model([node], [("x", [2, 5])], ["y"], {"k": np.array([k], I64)}, opset=17)


@pytest.mark.parametrize("k, largest", [(5, 1), (3, 1), (2, 0)])
def test_topk_values_are_one_lipschitz(k: int, largest: int) -> None:
    from tests.helpers.onnx_oracle import max_jacobian_norm

    model = _topk_model(k, largest=largest)
    bound = analyze(model).bound
    assert bound == 1.0
    assert max_jacobian_norm(model, [2, 5], n_points=6) <= bound * EXACT


def test_topk_unsorted_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="sorted=0"):
        analyze(_topk_model(3, sorted=0))
