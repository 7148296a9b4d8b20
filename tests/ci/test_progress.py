"""Progress bars: on stderr, only on a terminal, never in CI or with --quiet, no colour; per node for `bound`."""

from __future__ import annotations

import sys

import pytest

from lipgraph import progress
from tests.ci.helpers import MODEL, run


@pytest.fixture()
def terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CI", raising=False)
    # (sys.stderr is swapped by capsys between fixture and test, so the check itself is patched)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)


def test_enabled_only_on_a_terminal_outside_ci(monkeypatch, terminal) -> None:
    assert progress.enabled()
    assert not progress.enabled(quiet=True)
    for value in ("true", "1", "yes"):
        monkeypatch.setenv("CI", value)
        assert not progress.enabled()
    monkeypatch.setenv("CI", "false")
    assert progress.enabled()
    monkeypatch.undo()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert not progress.enabled()


def test_inference_bar_has_rate_and_eta_and_no_colour(capsys, monkeypatch, terminal) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    bar = progress.inference_progress()
    assert bar is not None
    for done in (100, 200, 300):
        bar(done, 300)
    err = capsys.readouterr().err
    assert "300/300" in err and "sample/s" in err and "<" in err  # elapsed<remaining: the ETA
    assert "\x1b[3" not in err and "m\x1b" not in err  # no SGR colour codes


def test_iterate_passes_items_through(capsys, terminal) -> None:
    assert list(progress.iterate(range(5), desc="epoch 1/1", unit="batch")) == list(range(5))
    assert "5/5" in capsys.readouterr().err
    assert list(progress.iterate(range(3), desc="x", unit="batch", on=False)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_bound_reports_progress_per_node(capsys, terminal) -> None:
    from lipgraph.analyze import analyze

    seen: list[tuple[int, int]] = []
    analysis = analyze(str(MODEL), progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert len(analysis.nodes) <= seen[-1][1]
    rc, out, err = run(capsys, "bound", str(MODEL))
    assert rc == 0 and "node" in err and "Lipschitz bound" in out and "node/s" not in out
    rc, _, err = run(capsys, "bound", str(MODEL), "-q")
    assert rc == 0 and err == ""


def test_no_bar_in_ci(capsys, monkeypatch, terminal) -> None:
    monkeypatch.setenv("CI", "true")
    rc, _, err = run(capsys, "bound", str(MODEL))
    assert rc == 0 and err == ""


def test_trainer_progress_is_not_a_hyperparameter() -> None:
    pytest.importorskip("torch")
    from lipgraph.train.loop import TrainConfig

    cfg = TrainConfig(progress=True)
    assert "progress" not in cfg.hyperparameters() and "log" not in cfg.hyperparameters()


@pytest.mark.slow
@pytest.mark.torch
def test_trainer_shows_batches_on_a_terminal_and_nothing_with_quiet(capsys, terminal, tmp_path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    args = [
        "train",
        "--epochs",
        "1",
        "--limit-train",
        "256",
        "--batch-size",
        "64",
        "--method",
        "plain",
        "--legacy-exporter",
    ]
    rc, _, err = run(capsys, *args, "--out", str(tmp_path / "a.onnx"))
    assert rc == 0, err
    assert "epoch 1/1" in err and "4/4" in err and "batch/s" in err  # the batch bar, with its rate
    assert "epoch   1/1" in err  # the per-epoch line
    rc, _, err = run(capsys, *args, "--out", str(tmp_path / "b.onnx"), "-q")
    assert rc == 0 and "batch/s" not in err and "epoch   1/1" not in err
    assert "wrote" in err  # the result is still reported
