"""Reading ONNX files safely: external data only from the model's own folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from lipgraph.errors import ModelLoadError

# Protobuf refuses messages over 2 GiB; larger models keep their weights in external files.
_MAX_MODEL_BYTES = 2**31


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, sparse ones, and those in node attributes, subgraphs
    included. Written with the public proto fields: onnx's own walker is private and may change."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(_graph_tensors(model.graph))
    for fn in model.functions:
        tensors.extend(_node_tensors(fn.node))
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def _check_external_paths(model: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse absolute locations and locations that resolve outside ``base_dir``."""
    base = base_dir.resolve()
    for tensor in _external_tensors(model):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise ModelLoadError(f"tensor '{tensor.name}' is marked external but names no file")
        if os.path.isabs(location) or Path(location).is_absolute() or location.startswith(("/", "\\")):
            raise ModelLoadError(
                f"tensor '{tensor.name}' points to an absolute external-data path '{location}'; "
                "lipgraph only reads external data from the model's own folder"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ModelLoadError(
                f"tensor '{tensor.name}' points to external data outside the model's folder "
                f"('{location}'); move the data file next to the model"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"external data file '{location}' for tensor '{tensor.name}' is missing; "
                "copy it next to the model"
            )
        for key in ("offset", "length"):
            if key in info and (not info[key].isdigit()):
                raise ModelLoadError(f"tensor '{tensor.name}' has a malformed external-data {key}")
        size = target.stat().st_size
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else size - offset
        if offset + length > size:
            raise ModelLoadError(
                f"tensor '{tensor.name}' asks for bytes {offset}..{offset + length} of '{location}', "
                f"which has only {size}; the external data file is truncated"
            )


def load_model(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, str]:
    """Load an ONNX model file and return it with the sha256 of its bytes.

    For a model with external data the digest also covers the bytes of every external tensor as loaded
    (so it is then not the plain ``sha256sum`` of the .onnx file).

    External data is read only from files inside the model's folder; anything else is refused.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file '{p}' does not exist")
    if p.is_dir():
        raise ModelLoadError(f"'{p}' is a directory; pass the path of an .onnx file")
    size = p.stat().st_size
    if size == 0:
        raise ModelLoadError(f"model file '{p}' is empty")
    if size >= _MAX_MODEL_BYTES:
        raise ModelLoadError(f"model file '{p}' is over 2 GiB; store its weights as external data")
    raw = p.read_bytes()
    h = hashlib.sha256(raw)
    try:
        model = onnx.ModelProto()
        model.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"'{p}' is not a readable ONNX model ({type(exc).__name__})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError(f"'{p}' holds no ONNX graph with nodes; is it an ONNX model file?")
    external = _external_tensors(model)
    if external:
        _check_external_paths(model, p.parent)
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(p.parent.resolve()))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelLoadError(f"cannot read the external data of '{p}': {exc}") from None
        # The weights live in other files: the digest must cover them, or a bound computed for one set of
        # weights would be accepted (`certify --bound`, `merge`) for another. Hash the bytes as loaded (not
        # re-read from disk), so that a file swapped after loading cannot slip in between hash and use.
        h.update(b"\0lipgraph-external-data\0")
        for tensor in external:
            name = tensor.name.encode()
            h.update(len(name).to_bytes(8, "little") + name)
            h.update(len(tensor.raw_data).to_bytes(8, "little") + tensor.raw_data)
    return model, h.hexdigest()


def model_sha256(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()
