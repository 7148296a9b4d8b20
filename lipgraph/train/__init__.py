"""The companion trainer (needs the ``torch`` extra): LMT, GroupSort, AWP, exported to ONNX.

Entry points: :func:`lipgraph.train.pipeline.run` (train, export, check) and the ``lipgraph train``
command. Nothing outside this package imports torch.
"""
