"""The quantities of the float error walk: affine bounds, per-tensor states, sum-rounding constants.

See ``lipgraph.floaterr.local`` for how each op updates them, and docs/floating-point.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lipgraph.errors import LipgraphError
from lipgraph.graph import Graph, Node
from lipgraph.norms import rounding


class NoFloatBound(LipgraphError):
    """No proven float-error bound for this node."""


@dataclass(frozen=True)
class Aff:
    """The nonnegative bound ``c + d * s`` for inputs of norm ``s``."""

    c: float = 0.0
    d: float = 0.0

    def __add__(self, o: Aff) -> Aff:
        return Aff(self.c + o.c, self.d + o.d)

    def scale(self, k: float) -> Aff:
        return Aff(self.c * k, self.d * k)


ZERO = Aff()


@dataclass(frozen=True)
class State:
    mag: Aff  # ||h(x)|| of the real network
    err: Aff  # ||h_float(x) - h(x)||
    terms: Aff  # norm of |W||x| + |b| behind the last affine computation (a fused kernel sums them)
    fan: int  # roundings that `terms` already went through (0: not an affine result)

    @property
    def fmag(self) -> Aff:
        """A bound on the norm of the float value."""
        return self.mag + self.err


@dataclass
class OpIn:
    node: Node
    graph: Graph
    states: list[State | None]  # None: a constant input
    factors: list[list[float]]  # [output][input]: Lipschitz factor of the output in that input
    u: float  # unit roundoff of this node's arithmetic
    u_dot: float  # relative rounding of the operands of a dot product before multiplying (TF32)

    def prop(self, o: int = 0, which: str = "err") -> Aff:
        out = ZERO
        for f, st in zip(self.factors[o], self.states, strict=True):
            if st is not None:
                out = out + getattr(st, which).scale(f)
        return out

    def const(self, i: int) -> np.ndarray | None:
        if i >= len(self.node.inputs) or not self.node.inputs[i]:
            return None
        t = self.graph.tensors.get(self.node.inputs[i])
        return None if t is None or t.variable or t.value is None else np.asarray(t.value, dtype=np.float64)

    def out_size(self, o: int = 0) -> int:
        shape = self.graph.shape_of(self.node.outputs[o])
        if shape is None or any(d is None for d in shape):
            raise NoFloatBound(f"the output shape of {self.node.op_type} '{self.node.name}' is unknown")
        return int(np.prod(shape, dtype=np.int64))

    def in_size(self, i: int = 0) -> int:
        shape = self.graph.shape_of(self.node.inputs[i])
        if shape is None or any(d is None for d in shape):
            raise NoFloatBound(f"the input shape of {self.node.op_type} '{self.node.name}' is unknown")
        return int(np.prod(shape, dtype=np.int64))


def gamma(n: int, u: float) -> float:
    """``gamma_n = n u / (1 - n u)`` (Higham 2002, Lemma 3.1), rounded up; NoFloatBound where it is useless."""
    try:
        return rounding.gamma(n, u)
    except ValueError as exc:
        raise NoFloatBound(str(exc)) from None


def dot_gamma(n: int, u: float, u_in: float) -> float:
    """Relative bound of a sum of ``n`` rounded operations whose operands were first rounded to ``u_in``."""
    if n * u >= 0.5 or u_in >= 0.5:
        raise NoFloatBound(f"a sum of {n} terms at unit roundoff {u:g} has no useful error bound")
    return math.expm1(2.0 * math.log1p(u_in) + n * math.log1p(u)) * (1.0 + 1e-9)


def underflow_unit(u: float) -> float:
    """The absolute error one rounded operation may add when its result lies below the normal range (gradual
    underflow, or flushed to zero): the smallest normal number of the format whose unit roundoff is ``u``
    (2^-1022 for float64, 2^-126 for float32, TF32 and bfloat16; 2^-14 for float16 and any coarser ``u``)."""
    if u <= 2.0**-53:
        return 2.0**-1022
    if u <= 2.0**-24:
        return 2.0**-126
    return 2.0**-14


def underflow_norm(roundings: int, n_out: int, u: float) -> float:
    """A bound on the L2 norm of the absolute (underflow) part of a node's rounding: ``n_out`` entries, each the
    result of ``roundings`` operations. Higham's relative bound (gamma_n) assumes no underflow; with it every
    operation is ``(x op y)(1 + d) + e``, ``|e| <= underflow_unit(u)`` (Higham 2002, sec. 2.1), and the later
    operations scale an earlier ``e`` by at most ``(1 + u)^roundings``."""
    if roundings <= 0 or n_out <= 0:
        return 0.0
    return roundings * underflow_unit(u) * math.sqrt(n_out) * (1.0 + gamma(roundings, u)) * (1.0 + 1e-12)


# How the runtime treats numbers below the normal range. "gradual": IEEE 754's default (subnormal results and
# operands kept), what ONNX Runtime's CPU provider does unless ``session.set_denormal_as_zero`` is set. "flush":
# results below the normal range may become zero (flush-to-zero, FTZ) and subnormal *operands* may be read as zero
# (denormals-are-zero, DAZ), as CUDA kernels built with ``-ftz=true`` and tensor-core GEMM/conv paths may do.
SUBNORMAL_MODES = ("gradual", "flush")


def check_subnormals(mode: str) -> str:
    if mode not in SUBNORMAL_MODES:
        raise ValueError(f"subnormal mode must be one of {', '.join(SUBNORMAL_MODES)}, got {mode!r}")
    return mode


def daz_norm(n_entries: int, u: float) -> float:
    """A bound on ``||DAZ(v) - v||_2`` for a tensor ``v`` of ``n_entries`` entries in the format of unit roundoff
    ``u``: reading subnormal operands as zero moves each entry by less than the smallest normal number."""
    if n_entries <= 0:
        return 0.0
    return underflow_unit(u) * math.sqrt(n_entries) * (1.0 + 1e-12)


def has_subnormal(value: np.ndarray, u: float) -> bool:
    """Whether a constant holds a nonzero entry below the normal range of the format of unit roundoff ``u``."""
    a = np.abs(np.asarray(value, dtype=np.float64))
    return bool(np.any((a > 0.0) & (a < underflow_unit(u))))


# Per ONNX element type: the largest finite number and the unit roundoff (a rounded result of magnitude at most the
# largest number stays finite in round to nearest). TF32 products share float32's exponent range.
FLOAT_RANGE = {
    11: (1.7976931348623157e308, 2.0**-53),  # DOUBLE
    1: (3.4028234663852886e38, 2.0**-24),  # FLOAT
    10: (65504.0, 2.0**-11),  # FLOAT16
    16: (3.3895313892515355e38, 2.0**-8),  # BFLOAT16
}


def overflow_free_norm(st: State, limit: float, u: float) -> float:
    """The largest input norm ``s`` for which no float operation producing this tensor overflows (Higham's model,
    and every bound here, assumes none does): its float entries are at most ``mag + err`` (a norm bounds every
    entry) and every partial sum behind them at most ``(1 + gamma_{fan+1}) terms``; both must stay below the
    format's largest number ``limit``. ``-inf`` when even ``s = 0`` is not covered."""
    try:
        grow = 1.0 + gamma(st.fan + 1, u)
    except NoFloatBound:
        return -math.inf
    out = math.inf
    for v in (st.mag + st.err, st.terms.scale(grow)):
        room = limit * (1.0 - 1e-9) - v.c
        if not (room >= 0.0 and math.isfinite(v.d)):
            return -math.inf
        if v.d > 0.0:
            out = min(out, room / v.d * (1.0 - 1e-12))
    return out


def make_state(mag: Aff, err: Aff, terms: Aff | None = None, fan: int = 0) -> State:
    return State(mag, err, terms if terms is not None else mag + err, fan)


def norm_broadcast(c: np.ndarray, out_shape_size: int) -> float:
    """||c broadcast to an output of ``out_shape_size`` elements|| (c repeats evenly)."""
    c = np.abs(np.asarray(c, dtype=np.float64)).reshape(-1)
    if c.size == 0:
        return 0.0
    reps = out_shape_size / c.size
    return float(np.sqrt(np.sum(c * c) * reps)) * (1.0 + 1e-12)


def schur(absw: np.ndarray, row_axis_sums: np.ndarray, col_axis_sums: np.ndarray) -> float:
    """Schur test: a nonnegative matrix has ``||A||_2 <= sqrt(max row sum * max column sum)``."""
    del absw
    return math.sqrt(float(np.max(row_axis_sums)) * float(np.max(col_axis_sums))) * (1.0 + 1e-12)
