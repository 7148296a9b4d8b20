"""lipgraph: sound L2 Lipschitz bounds and certified robustness radii for ONNX classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from lipgraph.analyze import Analysis, analyze  # noqa: E402
from lipgraph.certify import Certificate, certify  # noqa: E402
from lipgraph.errors import LipgraphError, UnsupportedModelError  # noqa: E402

__all__ = ["Analysis", "Certificate", "LipgraphError", "UnsupportedModelError", "__version__", "analyze", "certify"]
