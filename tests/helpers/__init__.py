"""Shared test helpers (oracles built on onnx.helper, onnxruntime and onnx's reference evaluator)."""
