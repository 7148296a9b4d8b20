"""Fuzzing pieces: valid seed models, byte and proto mutators, and one guarded CLI run.

A case passes when ``lipgraph bound`` exits 0 or 2 with no ``internal error`` and no traceback on
stderr, within a time limit. Everything is driven by a ``numpy`` generator seeded per iteration, so
any failure is reproduced from its seed alone.
"""

from __future__ import annotations

import contextlib
import io
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _model(nodes: list[onnx.NodeProto], x_shape: list, inits: dict[str, np.ndarray], out: str = "y") -> bytes:
    graph = helper.make_graph(nodes, "seed", [helper.make_tensor_value_info("x", F, x_shape)],
                              [helper.make_tensor_value_info(out, F, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def seed_models() -> dict[str, bytes]:
    """A few small valid models covering the main rule families and passes."""
    r = np.random.default_rng(0)

    def w(*s: int) -> np.ndarray:
        return (r.standard_normal(s) * 0.5).astype(np.float32)

    mlp = _model([
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1),
    ], ["N", 6], {"w1": w(8, 6), "b1": w(8), "w2": w(3, 8)})
    cnn = _model([
        helper.make_node("Conv", ["x", "k1", "kb"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[1, 1], dilations=[1, 1], group=1),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn"], name="bn", epsilon=1e-5),
        helper.make_node("LeakyRelu", ["bn"], ["a1"], name="lrelu", alpha=0.1),
        helper.make_node("MaxPool", ["a1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2],
                         pads=[0, 0, 0, 0]),
        helper.make_node("Conv", ["p1", "k2"], ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2],
                         auto_pad="SAME_UPPER", group=2),
        helper.make_node("AveragePool", ["c2"], ["p2"], name="avg", kernel_shape=[2, 2], strides=[1, 1],
                         ceil_mode=0, count_include_pad=0),
        helper.make_node("Flatten", ["p2"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1, alpha=1.0),
    ], ["N", 2, 6, 6], {"k1": w(4, 2, 3, 3), "kb": w(4), "s": w(4), "b": w(4), "m": w(4),
                        "v": np.abs(w(4)) + 0.5, "k2": w(4, 2, 3, 3), "wf": w(3, 4)})
    maxmin = _model([
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Split", ["h", "sp"], ["a", "b"], name="split", axis=1),
        helper.make_node("Max", ["a", "b"], ["mx"], name="max"),
        helper.make_node("Min", ["a", "b"], ["mn"], name="min"),
        helper.make_node("Concat", ["mx", "mn"], ["g"], name="cat", axis=1),
        helper.make_node("Add", ["g", "h"], ["res"], name="res"),
        helper.make_node("Transpose", ["res"], ["t"], name="tr", perm=[0, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["rs"], name="rs"),
        helper.make_node("Gemm", ["rs", "w2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["y"], name="sm", axis=-1),
    ], ["N", 6], {"w1": w(6, 8), "sp": np.array([4, 4], np.int64), "shape": np.array([-1, 8], np.int64),
                  "w2": w(8, 3)})
    gap = _model([
        helper.make_node("Conv", ["x", "k"], ["c"], name="conv", kernel_shape=[3, 3], dilations=[2, 2],
                         pads=[2, 1, 0, 2]),
        helper.make_node("Tanh", ["c"], ["t"], name="tanh"),
        helper.make_node("Pad", ["t", "pads"], ["pd"], name="pad", mode="reflect"),
        helper.make_node("GlobalAveragePool", ["pd"], ["g"], name="gap"),
        helper.make_node("Squeeze", ["g", "axes"], ["sq"], name="sq"),
        helper.make_node("Mul", ["sq", "scale"], ["y"], name="scale"),
    ], ["N", 3, 5, 4], {"k": w(4, 3, 3, 3), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                        "axes": np.array([2, 3], np.int64), "scale": w(4)})
    return {"mlp": mlp, "cnn": cnn, "maxmin": maxmin, "gap": gap}


# ---------------------------------------------------------------------------- byte mutations
def mutate_bytes(raw: bytes, rng: np.random.Generator, others: list[bytes]) -> tuple[bytes, str]:
    b = bytearray(raw)
    kind = rng.choice(["flip", "flip", "truncate", "splice", "overwrite", "insert", "delete", "dup"])
    if kind == "flip":
        k = int(rng.integers(1, 9))
        for pos in rng.integers(0, len(b), k):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        return bytes(b), f"flip {k} bits"
    if kind == "truncate":
        n = int(rng.integers(0, len(b)))
        return bytes(b[:n]), f"truncate to {n}"
    if kind == "splice":
        o = others[int(rng.integers(0, len(others)))]
        i, j = sorted(int(v) for v in rng.integers(0, len(b), 2))
        p, q = sorted(int(v) for v in rng.integers(0, len(o), 2))
        return bytes(b[:i] + o[p:q] + b[j:]), f"splice [{i}:{j}] <- other[{p}:{q}]"
    if kind == "overwrite":
        i = int(rng.integers(0, len(b)))
        n = int(rng.integers(1, 16))
        chunk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        return bytes(b[:i] + chunk + b[i + n:]), f"overwrite {n} at {i}"
    if kind == "insert":
        i = int(rng.integers(0, len(b)))
        chunk = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        return bytes(b[:i] + chunk + b[i:]), f"insert {len(chunk)} at {i}"
    if kind == "delete":
        i, j = sorted(int(v) for v in rng.integers(0, len(b), 2))
        return bytes(b[:i] + b[j:]), f"delete [{i}:{j}]"
    i, j = sorted(int(v) for v in rng.integers(0, len(b), 2))
    return bytes(b[:j] + b[i:j] + b[j:]), f"duplicate [{i}:{j}]"


# ---------------------------------------------------------------------------- proto mutations
_INT_ATTRS = ["kernel_shape", "pads", "strides", "dilations", "axes", "perm", "output_padding", "output_shape"]
_SCALAR_INT = ["axis", "group", "transA", "transB", "ceil_mode", "count_include_pad", "keepdims", "storage_order",
               "blocksize", "k", "largest", "sorted", "select_last_index", "to", "noop_with_empty_axes"]
_FLOATS = ["alpha", "beta", "gamma", "epsilon", "momentum", "lambd", "bias", "min", "max"]
_STRINGS = ["auto_pad", "mode", "direction", "coordinate_transformation_mode", "nearest_mode"]


def _rand_int(rng: np.random.Generator) -> int:
    return int(rng.choice([0, 1, 2, 3, -1, -2, 5, 7, 64, 2**31 - 1, -(2**31), 2**40, -(2**62), 2**63 - 1]))


def _rand_float(rng: np.random.Generator) -> float:
    return float(rng.choice([0.0, -1.0, 1.0, 0.5, 1e-30, -1e30, 1e30, float("nan"), float("inf"), -float("inf"),
                             float(rng.standard_normal() * 10)]))


def _rand_str(rng: np.random.Generator) -> bytes:
    opts = [b"", b"SAME_UPPER", b"SAME_LOWER", b"VALID", b"NOTSET", b"reflect", b"edge", b"constant", b"wrap",
            b"nearest", b"linear", b"cubic", b"\xff\xfe", b"x" * 300]
    return opts[int(rng.integers(0, len(opts)))]


def _new_attr(name: str, rng: np.random.Generator) -> AttributeProto:
    pick = rng.integers(0, 6)
    if name in _INT_ATTRS and pick < 4:
        return helper.make_attribute(name, [_rand_int(rng) for _ in range(int(rng.integers(0, 9)))],
                                     attr_type=AttributeProto.INTS)
    if name in _SCALAR_INT and pick < 4:
        return helper.make_attribute(name, _rand_int(rng))
    if name in _FLOATS and pick < 4:
        return helper.make_attribute(name, _rand_float(rng))
    if name in _STRINGS and pick < 4:
        return helper.make_attribute(name, _rand_str(rng))
    # the wrong type on purpose
    kind = rng.integers(0, 5)
    if kind == 0:
        return helper.make_attribute(name, _rand_int(rng))
    if kind == 1:
        return helper.make_attribute(name, _rand_float(rng))
    if kind == 2:
        return helper.make_attribute(name, _rand_str(rng))
    if kind == 3:
        return helper.make_attribute(name, [_rand_float(rng) for _ in range(int(rng.integers(1, 5)))])
    return helper.make_attribute(name, numpy_helper.from_array(np.array([_rand_float(rng)], np.float32)))


def mutate_proto(raw: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    m = onnx.ModelProto()
    m.ParseFromString(raw)
    g = m.graph
    kind = rng.choice(["attr", "attr", "attr", "attr", "dims", "init", "opset", "optype", "wire", "drop"])
    node = g.node[int(rng.integers(0, len(g.node)))]
    if kind == "attr":
        names = _INT_ATTRS + _SCALAR_INT + _FLOATS + _STRINGS
        existing = [a.name for a in node.attribute]
        name = existing[int(rng.integers(0, len(existing)))] if existing and rng.random() < 0.7 else \
            names[int(rng.integers(0, len(names)))]
        keep = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(keep)
        if rng.random() < 0.9:
            node.attribute.append(_new_attr(name, rng))
        desc = f"attr {node.name}.{name}"
    elif kind == "dims":
        dims = g.input[0].type.tensor_type.shape.dim
        d = dims[int(rng.integers(0, len(dims)))]
        if rng.random() < 0.2:
            d.dim_param = "S"
        else:
            d.dim_value = int(rng.choice([0, 1, 2, 3, 100, 10**6, 2**31, -3]))
        desc = "input dims"
    elif kind == "init":
        if not g.initializer:
            return raw, "noop"
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        c = rng.integers(0, 4)
        if c == 0 and t.dims:
            t.dims[int(rng.integers(0, len(t.dims)))] = int(rng.choice([0, 1, 3, 10**9, -1]))
        elif c == 1:
            t.data_type = int(rng.integers(0, 25))
        elif c == 2:
            t.raw_data = t.raw_data[: int(rng.integers(0, max(1, len(t.raw_data))))]
        else:
            arr = numpy_helper.to_array(t).copy()
            if arr.size:
                i = int(rng.integers(0, arr.size))
                if arr.dtype.kind == "f":
                    arr.flat[i] = _rand_float(rng)
                else:  # an integer constant (shapes, split sizes, pads): any int64
                    arr.flat[i] = np.int64(max(min(_rand_int(rng), 2**63 - 1), -(2**63)))
            t.CopyFrom(numpy_helper.from_array(arr.astype(arr.dtype), t.name))
        desc = f"initializer {t.name} ({c})"
    elif kind == "opset":
        m.opset_import[0].version = int(rng.choice([1, 6, 7, 9, 11, 13, 18, 21, 23, 25, 1000]))
        desc = f"opset {m.opset_import[0].version}"
    elif kind == "optype":
        ops = ["Relu", "Conv", "MaxPool", "Gemm", "Exp", "Mul", "Concat", "Split", "TopK", "Resize", "Pad", "Loop",
               "LpNormalization", "Softmax", "ArgMax", "Where", "Einsum", "Custom"]
        node.op_type = ops[int(rng.integers(0, len(ops)))]
        if rng.random() < 0.2:
            node.domain = "com.evil"
        desc = f"op_type {node.name} -> {node.op_type}"
    elif kind == "wire":
        names = ["x"] + [o for n in g.node for o in n.output] + [i.name for i in g.initializer] + ["", "ghost"]
        if node.input:
            node.input[int(rng.integers(0, len(node.input)))] = names[int(rng.integers(0, len(names)))]
        desc = f"rewire {node.name}"
    else:
        keep = [n for n in g.node if n is not node]
        del g.node[:]
        g.node.extend(keep)
        desc = f"drop {node.name}"
    return m.SerializeToString(), desc


# ---------------------------------------------------------------------------- running
class Hang(BaseException):  # noqa: N818 - not an Exception: lipgraph's last-resort handler must not catch it
    """Raised by the alarm when a case runs past its time limit."""


@dataclass
class Outcome:
    rc: int | None
    err: str
    seconds: float

    def bad(self) -> str | None:
        """Why this outcome breaks the contract (None when it keeps it)."""
        if self.rc is None:
            return "hang"
        if self.rc not in (0, 2):
            return f"exit {self.rc}"
        if "internal error" in self.err or "Traceback" in self.err:
            return "internal error"
        if self.rc == 2 and not self.err.startswith("lipgraph: error:"):
            return "exit 2 without an error line"
        if "out of memory" in self.err:
            return "out of memory"
        return None


def run_bound(path: Path, limit_s: int = 20) -> Outcome:
    """``lipgraph.cli.main(["bound", path])`` in-process, with stdout/stderr captured and an alarm."""
    from lipgraph.cli import main

    err, out = io.StringIO(), io.StringIO()

    def _alarm(_sig: int, _frame: object) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    t0 = time.perf_counter()
    rc: int | None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            rc = main(["bound", str(path)])
    except Hang:
        rc = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(rc, err.getvalue(), time.perf_counter() - t0)


Mutator = Callable[[bytes, np.random.Generator, list[bytes]], tuple[bytes, str]]


def fuzz(n: int, seed: int, folder: Path, mutate: Mutator, limit_s: int = 20) -> tuple[int, list[str], dict[int, int]]:
    """Run ``n`` mutated cases; returns (cases run, failure lines, exit-code counts)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small SVDs: BLAS threads only spin on a shared machine
        return _fuzz(n, seed, folder, mutate, limit_s)


def _fuzz(n: int, seed: int, folder: Path, mutate: Mutator, limit_s: int) -> tuple[int, list[str], dict[int, int]]:
    seeds = list(seed_models().values())
    failures: list[str] = []
    codes: dict[int, int] = {}
    path = folder / "case.onnx"
    for it in range(n):
        rng = np.random.default_rng([seed, it])
        base = seeds[it % len(seeds)]
        data, desc = mutate(base, rng, seeds)
        path.write_bytes(data)
        res = run_bound(path, limit_s)
        codes[res.rc if res.rc is not None else -1] = codes.get(res.rc if res.rc is not None else -1, 0) + 1
        why = res.bad()
        if why:
            keep = folder / f"fail_{seed}_{it}.onnx"
            keep.write_bytes(data)
            failures.append(f"seed=({seed}, {it}) {desc}: {why}: {res.err.strip()[:300]} [{keep}]")
    return n, failures, codes
