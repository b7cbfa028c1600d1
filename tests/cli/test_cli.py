"""The `ies` command end to end on tiny configurations (seconds each)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ies.cli import main, parse_method_spec

TINY = ["--epochs", "2", "--train-size", "200", "--quiet"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    assert main(["compare", *TINY, "--seeds", "2", "--out", str(out)]) == 0
    return out


def test_compare_writes_report(compared):
    for name in ("summary.md", "comparison.json", "test_accuracy.png", "backprop_samples.png",
                 "backprop_saved.png", "accuracy_vs_time.png"):
        assert (compared / name).stat().st_size > 0, name
    runs = sorted(p.name for p in (compared / "runs").iterdir())
    assert runs == ["ies-seed0", "ies-seed1", "none-seed0", "none-seed1"]
    run = compared / "runs" / "ies-seed1"
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"]["seed"] == 1 and meta["config"]["method"] == "ies"
    assert meta["config"]["model"] == "mnist1d-cnn" and meta["config"]["epochs"] == 2  # resolved, no None
    assert {"torch_version", "python_version", "ies_version", "platform"} <= set(meta["environment"])
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("train_loss", "test_loss", "test_acc", "active", "excluded", "newly_excluded", "reincluded",
                "backprop_saved", "train_seconds", "probe_seconds", "probe_share"):
        assert col in header, col
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert (run / "per_sample.npz").exists()
    md = (compared / "summary.md").read_text()
    assert "| none |" in md and "| ies |" in md and "probe pass" in md
    rows = json.loads((compared / "comparison.json").read_text())["rows"]
    assert {r["label"] for r in rows} == {"none", "ies"}
    assert all(r["seeds"] == [0, 1] for r in rows)


def test_report_rebuilds_from_saved_runs(compared, tmp_path, capsys):
    assert main(["report", str(compared / "runs"), "--out", str(tmp_path)]) == 0
    old = json.loads((compared / "comparison.json").read_text())["rows"]
    new = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    assert [r["final_test_acc_mean"] for r in new] == [r["final_test_acc_mean"] for r in old]
    assert [r["backprop_saved"] for r in new] == [r["backprop_saved"] for r in old]
    assert (tmp_path / "test_accuracy.png").exists()
    assert "final test acc" in capsys.readouterr().out


def test_train_config_file_and_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train_size": 200, "epochs": 5, "lr": 0.005, "method": "ies",
                               "method_params": {"threshold": 0.01}}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "2", "--method", "ies:order=1", "--quiet",
                 "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["epochs"] == 2  # the flag overrides the file
    assert saved["lr"] == 0.005 and saved["train_size"] == 200  # the file sets defaults
    assert saved["method_params"] == {"threshold": 0.01, "order": 1}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["num_train"], summary["num_val"], summary["num_test"]) == (200, 0, 50)  # what was really used


def test_jsonl_mode(tmp_path, capsys):
    assert main(["train", *TINY, "--jsonl", "--out", str(tmp_path / "r")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert all("test_acc" in x and "active" in x for x in lines)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--dataset", "imagenet-9000"], "unknown dataset"),
        (["train", "--model", "resnet9000"], "unknown model"),
        (["train", "--method", "magic"], "unknown method"),
        (["train", "--method", "ies:threshold=-1"], "threshold"),
        (["train", "--method", "ies:speed=9"], "has no parameter"),
        (["train", "--method", "ies:threshold"], "key=value"),
        (["train", "--val-fraction", "0.9"], "val_fraction"),
        (["train", "--optimizer", "lbfgs"], "unknown optimizer"),
        (["train", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fm"], "apt-get install"),
        (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/c10"], "cifar"),
        (["train", "--config", "/nonexistent/cfg.json"], "does not exist"),
        (["report", "/nonexistent/runs"], "does not exist"),
    ],
)
def test_clear_errors(argv, needle, tmp_path, capsys):
    rc = main([*argv, "--quiet", "--out", str(tmp_path / "o")] if argv[0] == "train" else argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert needle.lower() in err.lower(), err


@pytest.mark.parametrize("flag", [["--epochs", "0"], ["--batch-size", "-3"], ["--seeds", "x"]])
def test_bad_flag_values_rejected_by_parser(flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", *flag])
    assert e.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_parse_method_spec():
    assert parse_method_spec("ies:threshold=1e-2:order=1") == ("ies", {"threshold": 0.01, "order": 1})
    assert parse_method_spec("none") == ("none", {})


def test_python_dash_m_and_list():
    out = subprocess.run([sys.executable, "-m", "ies", "list"], capture_output=True, text=True, check=True).stdout
    assert "mnist1d" in out and "resnet18" in out and "ies:" in out
