"""Find the logits: cut a final Softmax / LogSoftmax (docs/certificate.md).

Softmax keeps the argmax and LogSoftmax keeps the logit differences, so certifying the tensor
before them certifies the same predictions with a tighter margin. Shape-only ops after the
softmax (Identity, Flatten, Reshape, Squeeze) are cut along with it.
"""

from __future__ import annotations

from lipgraph.graph import Graph, Node

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
            if not _over_class_axis(graph, prod, data_inputs[0]):
                graph.warnings.append(
                    f"softmax '{prod.name}' is not over the class axis of a (batch, classes) tensor; "
                    "it is kept and bounded (1/2) instead of cut"
                )
                break
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


def _over_class_axis(graph: Graph, node: Node, src: str) -> bool:
    """True when the softmax normalises exactly the classes of each sample.

    Opset 13+ normalises one axis; older opsets normalise the flattened trailing block from
    ``axis`` (default 1) on. Cutting is only right when every other non-batch axis has length 1:
    a softmax over the batch axis, or per row of a (batch, rows, classes) tensor, changes which
    entry is largest overall.
    """
    shape = graph.shape_of(src)
    if shape is None:
        return False
    rank = len(shape)
    if rank == 1:
        return True
    default = -1 if node.opset >= 13 else 1
    axis = int(node.attrs.get("axis", default)) % rank
    if axis == 0:
        return False
    if node.opset >= 13:
        others = [d for i, d in enumerate(shape) if i not in (0, axis)]
    else:
        others = [d for i, d in enumerate(shape[:axis]) if i != 0]
    return all(d == 1 for d in others)
