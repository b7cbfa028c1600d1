"""Run folders and CLI errors: exclusive folders, validated --out, status markers, report refusals."""

import json
import os
from pathlib import Path

import pytest

from ies import IESWarning
from ies.cli import main
from ies.experiments import engine
from ies.experiments.runs import prepare_out

TINY = ["--epochs", "2", "--train-size", "120", "--quiet"]


def _status(d: Path) -> str:
    return json.loads((d / "status.json").read_text())["status"]


def test_train_writes_status_metrics_and_the_argv_it_was_given(tmp_path):
    out = tmp_path / "r"
    argv = ["train", *TINY, "--out", str(out)]
    assert main(argv) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["command"] == "ies " + " ".join(argv)  # not sys.argv (pytest's)
    assert _status(out) == "complete"
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert not (out / "checkpoint.pt").exists()  # a complete run is not resumed, its checkpoint goes
    summary = json.loads((out / "summary.json").read_text())
    assert {"probe_seconds", "probe_share", "reincluded", "train_seconds"} <= set(summary)


@pytest.mark.parametrize(
    "setup, extra, needle",
    [
        ("file", [], "is a file"),
        ("nonempty", [], "--resume"),
        ("foreign", ["--overwrite"], "does not look like an ies output"),
        ("missing", ["--resume"], "nothing to continue"),
    ],
)
def test_out_is_validated_before_training(setup, extra, needle, tmp_path, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(engine, "_epoch", lambda *a, **k: trained.append(1))  # any training would show here
    out = tmp_path / "o"
    if setup == "file":
        out.write_text("x")
    elif setup in ("nonempty", "foreign"):
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        if setup == "nonempty":
            (out / "config.json").write_text("{}")
    rc = main(["compare", *TINY, "--seeds", "1", "--out", str(out), *extra])
    assert rc == 2 and not trained
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    if setup == "foreign":
        assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_leaves_nothing_of_the_old_run(tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--method", "ies", "--out", str(out)]) == 0
    assert (out / "per_sample.npz").exists()
    assert main(["train", *TINY, "--method", "random", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "per_sample.npz").exists()  # random keeps no per-sample arrays
    assert json.loads((out / "config.json").read_text())["config"]["method"] == "random"


def test_default_out_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirs = [prepare_out(None, "train") for _ in range(4)]  # same second, same command
    assert len(set(dirs)) == 4 and all(d.is_dir() for d in dirs)


def test_duplicate_method_specs_are_refused(tmp_path, capsys):
    assert main(["compare", *TINY, "--methods", "none,ies,ies", "--out", str(tmp_path / "o")]) == 2
    assert "twice" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "resnet18"], "resnet18"),
        (["--device", "bogus"], "bogus"),
        (["--lr", "inf"], "lr"),
        (["--method", "early-stop"], "--val-fraction"),
    ],
)
def test_user_errors_are_one_line(argv, needle, tmp_path, capsys):
    assert main(["train", *TINY, *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # refused before the folder was made


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise ValueError("an internal bug")

    monkeypatch.setattr(engine, "_probe", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["train", *TINY, "--out", str(tmp_path / "o")])
    assert _status(tmp_path / "o") == "failed"


def test_an_epoch_of_nonfinite_losses_stops_the_run(tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.warns(IESWarning, match="recorded losses are not finite: training has likely diverged"):
        assert main(["train", *TINY, "--lr", "1e30", "--optimizer", "sgd-f", "--out", str(out)]) == 1
    assert "NaN or infinite" in capsys.readouterr().err
    assert _status(out) == "failed"
    with pytest.warns(IESWarning, match="recorded losses are not finite"):
        assert main(["train", *TINY, "--lr", "1e30", "--optimizer", "sgd-f", "--allow-nonfinite",
                     "--out", str(tmp_path / "o2")]) == 0


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "c"
    assert main(["compare", *TINY, "--seeds", "2", "--out", str(out)]) == 0
    return out


def test_report_refuses_incomplete_runs_unless_asked(compared, tmp_path, capsys):
    runs = tmp_path / "runs"
    import shutil

    shutil.copytree(compared / "runs", runs)
    status = runs / "ies-seed1" / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "status": "running"}))
    (runs / "ies-seed1" / "summary.json").unlink()
    assert main(["report", str(runs), "--out", str(tmp_path / "a")]) == 2
    assert "ies-seed1 (running)" in capsys.readouterr().err
    assert main(["report", str(runs), "--out", str(tmp_path / "b"), "--include-incomplete"]) == 0
    assert "Incomplete runs included" in (tmp_path / "b" / "summary.md").read_text()


def test_report_refuses_unequal_seed_counts(compared, tmp_path, capsys):
    import shutil

    shutil.copytree(compared / "runs", tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs" / "none-seed1")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unequal seed counts" in err and "none: 1" in err and "ies: 2" in err


def test_report_names_the_file_it_cannot_read(compared, tmp_path, capsys):
    import shutil

    shutil.copytree(compared / "runs", tmp_path / "runs")
    bad = tmp_path / "runs" / "none-seed0" / "summary.json"
    bad.write_text("{not json")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "a")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path, capsys):
    assert main(["train", "--epochs", "2", "--train-size", "120", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [ln.split(":")[0] for ln in err.splitlines() if "epoch" in ln] == ["ies epoch 1/2", "ies epoch 2/2"]
    assert "probe=" in err


def test_resume_refuses_other_settings(compared, tmp_path, capsys):
    import shutil

    out = tmp_path / "c"
    shutil.copytree(compared, out)
    assert main(["compare", "--epochs", "3", "--train-size", "120", "--quiet", "--seeds", "2",
                 "--resume", str(out)]) == 2
    assert "was run with other settings (epochs)" in capsys.readouterr().err
    run = out / "runs" / "ies-seed0"
    assert main(["train", "--resume", str(run), "--epochs", "5"]) == 2
    assert "drop the run-configuration flags (epochs)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # complete: nothing to do
    assert main(["compare", *TINY, "--seeds", "2", "--resume", str(out)]) == 0  # all complete: report only
