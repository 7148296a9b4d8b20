"""lipgraph: sound L2 Lipschitz bounds and certified robustness radii for ONNX classifiers."""

from __future__ import annotations

import os
import sys

from lipgraph.version import __version__

# BLAS threads. The bound is many small dense problems (per-frequency conv symbols); OpenBLAS's
# threads busy-wait, and on a machine whose cores are already busy (CI runners, ONNX Runtime's
# own pool during `certify`) they made `lipgraph bound` on a ResNet-18 5-10x slower (measured:
# 16 s with one thread against 59-108 s with the default, 2 cores under load). The setting only
# works before numpy is first imported, so it is made here, for the command line only (library
# users keep their own settings), and never over a value the user chose.
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _invoked_as_cli() -> bool:
    argv = list(getattr(sys, "orig_argv", []) or [])
    if sys.argv and os.path.basename(sys.argv[0]) in ("lipgraph", "lipgraph.exe"):
        return True
    return "-m" in argv and argv[argv.index("-m") + 1 : argv.index("-m") + 2] == ["lipgraph"]


if "numpy" not in sys.modules and _invoked_as_cli():
    for _var in _BLAS_ENV:
        os.environ.setdefault(_var, os.environ.get("LIPGRAPH_BLAS_THREADS", "1"))

from lipgraph.analyze import Analysis, analyze  # noqa: E402
from lipgraph.certify import Certificate, certify  # noqa: E402
from lipgraph.errors import LipgraphError, UnsupportedModelError  # noqa: E402

__all__ = ["Analysis", "Certificate", "LipgraphError", "UnsupportedModelError", "__version__", "analyze", "certify"]
