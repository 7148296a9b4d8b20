"""Errors that reach the user as one clear line and exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


class LipgraphError(Exception):
    """A problem with the user's input (model, data, flags) that they can fix.

    The message is a single line that says what is wrong and what to do; the CLI prints it
    without a traceback and exits with code 2.
    """


class ModelLoadError(LipgraphError):
    """The model file cannot be read, parsed or trusted."""


class DataError(LipgraphError):
    """The dataset cannot be read or does not fit the model."""


@dataclass(frozen=True)
class Refusal:
    """One node lipgraph cannot give a sound bound for."""

    domain: str
    op_type: str
    opset: int
    node_name: str
    reason: str

    def line(self) -> str:
        return f"{self.domain}:{self.op_type}@{self.opset} {self.node_name}: {self.reason}"


class UnsupportedModelError(LipgraphError):
    """Raised once, after the walk, with every node that has no sound bound."""

    def __init__(self, refusals: list[Refusal]):
        self.refusals = list(refusals)
        n = len(self.refusals)
        head = f"{n} node{'s' if n != 1 else ''} without a sound Lipschitz bound"
        super().__init__(head + ":\n" + "\n".join(r.line() for r in self.refusals))


class Refuse(Exception):
    """Raised by a rule: this node (as configured) has no sound bound. The walker collects it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
