"""Remove Identity / Dropout(inference) chains by renaming their consumers' inputs."""

from __future__ import annotations

from lipgraph.graph import Graph

_NOOPS = {"Identity"}


def remove_identities(graph: Graph) -> None:
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.domain != "ai.onnx" or node.op_type not in _NOOPS or len(node.inputs) != 1:
                continue
            src, dst = node.inputs[0], node.outputs[0]
            if dst == graph.output_name:
                continue  # keep the name the user sees
            for other in graph.nodes:
                other.inputs = [src if i == dst else i for i in other.inputs]
            graph.nodes.remove(node)
            changed = True
