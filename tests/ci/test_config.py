"""Where the gates come from: [tool.lipgraph] found like ruff finds its table, --config, --no-config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ci.helpers import certify

ROOT_TABLE = '[project]\nname = "mono"\n\n[tool.lipgraph]\nmin-clean-accuracy = 1.0\neps = [0.25]\n'


@pytest.fixture()
def monorepo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository root with gates, and a sub-package whose pyproject has no [tool.lipgraph]."""
    (tmp_path / "pyproject.toml").write_text(ROOT_TABLE)
    sub = tmp_path / "packages" / "vision"
    sub.mkdir(parents=True)
    (sub / "pyproject.toml").write_text('[project]\nname = "vision"\n\n[tool.ruff]\nline-length = 100\n')
    monkeypatch.chdir(sub)
    return tmp_path


def test_subpackage_pyproject_without_table_keeps_the_roots_gates(monorepo, capsys) -> None:
    rc, out, err = certify(capsys, "--format", "json")
    rep = json.loads(out)
    assert rc == 1, err  # clean accuracy 98% < 1.0: the root's gate ran
    assert [g["name"] for g in rep["gates"]] == ["clean_accuracy"]
    assert rep["meta"]["config"] == str(monorepo / "pyproject.toml")
    assert set(rep["certified_accuracy"]) == {"0.25"}
    # the text report names the file too
    rc, out, _ = certify(capsys)
    assert rc == 1 and any(
        ln.startswith("config") and str(monorepo / "pyproject.toml") in ln for ln in out.splitlines()
    )


def test_config_flag_overrides_the_search_and_no_config_ignores_files(monorepo, capsys, tmp_path) -> None:
    other = tmp_path / "gates.toml"
    other.write_text("[tool.lipgraph]\nmin-clean-accuracy = 0.5\n")
    rc, out, err = certify(capsys, "--format", "json", "--config", str(other))
    rep = json.loads(out)
    assert rc == 0, err
    assert rep["meta"]["config"] == str(other) and rep["gates"][0]["threshold"] == 0.5
    rc, out, _ = certify(capsys, "--format", "json", "--no-config")
    rep = json.loads(out)
    assert rc == 0 and rep["gates"] == [] and rep["meta"]["config"] is None
    rc, out, _ = certify(capsys, "--no-config")
    assert "config" in out and "none" in out


@pytest.mark.parametrize(
    "text,needle",
    [
        ('[project]\nname = "x"\n', "no [tool.lipgraph] table"),
        ("[tool.lipgraph]\nmin-clean-acuracy = 0.5\n", "unknown key 'min-clean-acuracy'"),
        ("[tool.lipgraph\n", "not valid TOML"),
    ],
)
def test_bad_config_file_is_one_line_exit_2(monorepo, capsys, tmp_path, text, needle) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = tmp_path / "r.json"
    rc, _, err = certify(capsys, "--config", str(bad), "-o", f"json={out}")
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_config_and_no_config_together_and_missing_file(monorepo, capsys, tmp_path) -> None:
    rc, _, err = certify(capsys, "--config", str(monorepo / "pyproject.toml"), "--no-config")
    assert rc == 2 and "exclude each other" in err
    rc, _, err = certify(capsys, "--config", str(tmp_path / "nope.toml"))
    assert rc == 2 and "does not exist" in err


def test_unknown_key_in_the_found_file_stays_an_error(monorepo, capsys) -> None:
    (monorepo / "pyproject.toml").write_text("[tool.lipgraph]\nmax-lipshitz = 2\n")
    rc, _, err = certify(capsys)
    assert rc == 2 and "unknown key 'max-lipshitz'" in err
