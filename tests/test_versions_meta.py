"""The analysis meta's version table is read without importing scipy or onnxruntime, and says the same
versions as the imported modules would."""

from __future__ import annotations

import json
import subprocess
import sys
import types

from lipgraph.analyze import _module_version, versions


def test_versions_do_not_import_and_match_the_modules():
    code = (
        "import json, sys\n"
        "from lipgraph.analyze import versions\n"
        "v = versions()\n"
        "print(json.dumps([v, [m for m in ('scipy', 'onnxruntime') if m in sys.modules]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    v, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == []
    import onnxruntime
    import scipy

    assert v["scipy"] == scipy.__version__
    assert v["onnxruntime"] == onnxruntime.__version__
    assert v == versions()  # the same table once both are imported


def test_module_version_sources(monkeypatch):
    assert _module_version("lipgraph_no_such_module_xyz") == "not installed"
    fake = types.ModuleType("lipgraph_fake_mod")
    fake.__version__ = "9.9.9"
    monkeypatch.setitem(sys.modules, "lipgraph_fake_mod", fake)
    assert _module_version("lipgraph_fake_mod") == "9.9.9"  # an imported module speaks for itself


def test_disagreeing_distributions_ask_the_module(monkeypatch):
    """onnxruntime and onnxruntime-gpu installed side by side: metadata cannot tell, the module decides."""
    import importlib.metadata as md

    real = md.version
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)

    def fake_version(dist: str) -> str:
        if dist == "onnxruntime":  # the CPU build's metadata says one thing, the GPU build's another
            return "0.0.1"
        if dist == "onnxruntime-gpu":
            return real("onnxruntime")
        return real(dist)

    monkeypatch.setattr(md, "version", fake_version)
    got = _module_version("onnxruntime")  # not imported yet: the metadata is asked first
    import onnxruntime

    assert got == onnxruntime.__version__ != "0.0.1"
