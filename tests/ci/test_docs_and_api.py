"""The README's Python example runs as written, its CI recipe is one certify run, and the API takes a scalar eps."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def test_readme_python_example_runs(monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section("Python API"), re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(ROOT)  # the example uses the bundled sample model by its relative path
    namespace: dict = {}
    exec(compile(blocks[0], "README.md (Python API)", "exec"), namespace)  # noqa: S102 - our own README
    cert = namespace["cert"]
    assert cert.eps == [0.5] and set(cert.certified_accuracy) == {"0.5"}
    assert namespace["analysis"].bound >= 1.0


def test_readme_ci_recipe_is_one_certify_run() -> None:
    github, gitlab = re.findall(r"```yaml\n(.*?)```", _section("lipgraph in CI"), re.S)
    for recipe in (github, gitlab):
        assert recipe.count("lipgraph certify") == 1  # every report from one inference
    for fmt in ("markdown", "junit", "sarif"):
        assert f"--output {fmt}=" in github
    assert "--output gitlab=" in gitlab and "codequality:" in gitlab


def test_scalar_eps_is_one_radius() -> None:
    import lipgraph

    data = np.load(ROOT / "sample_models" / "digits_test.npz")
    model = str(ROOT / "sample_models" / "lmt.onnx")
    one = lipgraph.certify(model, data["x"][:40], data["y"][:40], eps=0.25)
    listed = lipgraph.certify(model, data["x"][:40], data["y"][:40], eps=[0.25])
    assert one.eps == listed.eps == [0.25] and one.certified_accuracy == listed.certified_accuracy
    assert lipgraph.certify(model, data["x"][:5], eps=np.float32(0.5)).eps == [0.5]
    with pytest.raises(lipgraph.LipgraphError):
        lipgraph.certify(model, data["x"][:5], eps=-1.0)


def test_package_ships_py_typed_and_license() -> None:
    import tomllib

    assert (ROOT / "lipgraph" / "py.typed").is_file()
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["lipgraph"]
    assert meta["project"]["license"]["text"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
