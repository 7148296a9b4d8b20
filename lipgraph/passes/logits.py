"""Find the logits: cut a final Softmax / LogSoftmax (SPEC sec. 2).

Softmax keeps the argmax and LogSoftmax keeps the logit differences, so certifying the tensor
before them certifies the same predictions with a tighter margin. Shape-only ops after the
softmax (Identity, Flatten, Reshape, Squeeze) are cut along with it.
"""

from __future__ import annotations

from lipgraph.graph import Graph

_SOFTMAX = {"Softmax", "LogSoftmax"}
_PASS_THROUGH = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"}


def cut_final_softmax(graph: Graph) -> None:
    name = graph.output_name
    seen_softmax = False
    while True:
        prod = graph.producer(name)
        if prod is None or prod.domain != "ai.onnx":
            break
        data_inputs = [i for i in prod.inputs if i and graph.is_variable(i)]
        if prod.op_type in _SOFTMAX and len(data_inputs) == 1:
            name = data_inputs[0]
            seen_softmax = True
            continue
        if prod.op_type in _PASS_THROUGH and len(data_inputs) == 1 and not seen_softmax:
            # Only walk back through shape ops if a softmax lies behind them.
            behind = graph.producer(data_inputs[0])
            if behind is not None and behind.op_type in _SOFTMAX:
                name = data_inputs[0]
                continue
        break
    if seen_softmax and name != graph.output_name:
        graph.warnings.append(f"final softmax cut: certifying the logits '{name}' before it")
        graph.output_name = name
