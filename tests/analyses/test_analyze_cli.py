"""`ies analyze` end to end on tiny MNIST-1D runs: every analysis writes a plot and finite, plausible numbers."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from ies.cli import main

TINY = ["--train-size", "300", "--epochs", "12", "--quiet", "--threads", "1"]
# A loose threshold so some samples are mastered within 12 epochs of a tiny run.
LOOSE = ["--threshold", "0.05", "--ies", "ies:threshold=0.05"]


@pytest.fixture(scope="module")
def all_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze")
    args = ["analyze", "all", *TINY, *LOOSE, "--every", "4", "--subset", "64", "--iters", "5",
            "--settings", "symmetric:0.2,instance:0.4", "--dd-epochs", "14", "--out", str(out)]
    assert main(args) == 0
    return out


def _load(out, name):
    payload = json.loads((out / name / f"{name}.json").read_text())
    with open(out / name / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert (out / name / f"{name}.png").stat().st_size > 1000
    assert payload["analysis"] == name and payload["claim"] and rows
    return payload["summary"], rows


def _fin(v):
    return v is not None and math.isfinite(float(v))


def test_index_lists_every_analysis(all_out):
    idx = json.loads((all_out / "analyses.json").read_text())
    assert set(idx["analyses"]) == {"mastery", "cv", "gradnorm", "sharpness", "forgetting", "noise", "transfer"}


def test_mastery(all_out):
    s, rows = _load(all_out, "mastery")
    assert {r["condition"] for r in rows} == {"removed", "kept"}
    assert {int(r["order"]) for r in rows} == {0, 1, 2, 3}
    assert all(0 <= int(r["mastered"]) <= 300 for r in rows)
    assert sum(int(r["mastered"]) for r in rows if r["condition"] == "removed") > 0
    for k in ("0", "1", "2", "3"):
        assert 0 <= s["removed"][k]["churn"] <= 1 and 0 <= s["kept"][k]["churn"] <= 1
    # Nothing can be judged before order + window + m losses exist.
    first = [int(r["epoch"]) for r in rows if r["condition"] == "kept" and int(r["mastered"]) > 0
             and r["order"] == "2"]
    assert not first or min(first) >= 5


def test_cv(all_out):
    s, rows = _load(all_out, "cv")
    assert {r["optimizer"] for r in rows} == {"sgd", "adam"}
    vals = [float(r["cv_diff"]) for r in rows if r["cv_diff"] != ""]
    assert vals and all(v > 0 and math.isfinite(v) for v in vals)
    # Order k needs k + 1 losses: undefined before.
    assert all(r["cv_diff"] == "" for r in rows if int(r["epoch"]) <= int(r["order"]))
    for opt in ("sgd", "adam"):
        assert s["by_optimizer"][opt]["lowest_mean_cv_diff_order"] in (0, 1, 2, 3)


def test_gradnorm(all_out):
    s, rows = _load(all_out, "gradnorm")
    assert {r["method"] for r in rows} == {"none", "ies"}
    assert all(float(r["grad_norm"]) > 0 for r in rows)
    assert _fin(s["grad_norm"]["none"]["mean"]) and _fin(s["grad_norm"]["ies"]["mean"])
    assert s["runs"]["ies"]["backprop_saved"] > 0


def test_sharpness(all_out):
    s, rows = _load(all_out, "sharpness")
    measured = [r for r in rows if r["hessian_top_eig"] != ""]
    assert sorted({int(r["epoch"]) for r in measured}) == [1, 4, 8, 12]
    for r in measured:
        assert float(r["hessian_top_eig"]) > 0 and float(r["sam"]) > -1e-6
    assert s["settings"]["subset_size"] == 64
    # Same initial weights and data order: the first measurement agrees before IES removes anything.
    first = {r["method"]: float(r["hessian_top_eig"]) for r in measured if r["epoch"] == "1"}
    assert first["none"] == pytest.approx(first["ies"], rel=1e-6)


def test_forgetting(all_out):
    s, rows = _load(all_out, "forgetting")
    assert s["per_seed"][0]["group_size"] == math.ceil(0.05 * 300)
    assert s["group_reincluded_max"] >= 0 and s["group_reincluded_mean"] >= 0
    for r in s["at_epochs"]:
        assert 0 <= r["group_acc"] <= 100 and r["all_loss"] > 0 and _fin(r["group_loss_none"])


def test_noise(all_out):
    s, rows = _load(all_out, "noise")
    assert set(s["settings"]) == {"symmetric-20", "instance-40", "symmetric-10-14ep"}
    assert s["settings"]["symmetric-20"]["realised_rate"] == pytest.approx(60 / 300)
    assert abs(s["settings"]["instance-40"]["realised_rate"] - 0.4) < 0.12  # N = 300
    assert s["settings"]["symmetric-10-14ep"]["epochs"] == 14
    for v in s["settings"].values():
        for m in ("none", "ies"):
            assert 0 <= v[m]["best_test_acc"] <= 100 and 1 <= v[m]["best_epoch"] <= v["epochs"]
            assert 0 <= v[m]["backprop_saved"] < 1
    runs = sorted((all_out / "noise" / "runs").iterdir())
    assert len(runs) == 6
    labels = np.load(runs[0] / "noisy_labels.npy")
    assert labels.shape == (300,) and labels.min() >= 0 and labels.max() < 10


def test_transfer(all_out):
    s, rows = _load(all_out, "transfer")
    for m in ("none", "ies"):
        for e in (1, 5):
            assert 0 <= s[m][f"transfer_acc_{e}ep"] <= 100
    assert s["source_classes"] == [0, 1, 2, 3, 4] and s["target_classes"] == [5, 6, 7, 8, 9]
    assert len(rows) == 2


def test_single_analysis_command_and_bad_spec(tmp_path, capsys):
    out = tmp_path / "gn"
    argv = ["analyze", "gradnorm", "--train-size", "200", "--epochs", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    assert (out / "gradnorm.png").exists() and (out / "gradnorm.csv").exists()
    # The command recorded is the argv given to main, not the test runner's sys.argv.
    assert json.loads((out / "gradnorm.json").read_text())["command"] == "ies " + " ".join(argv)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["ies-seed0", "none-seed0"]
    assert main(["analyze", "gradnorm", "--ies", "none", "--out", str(tmp_path / "x")]) == 2
    assert "--ies" in capsys.readouterr().err


def test_a_non_empty_out_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("earlier results")
    assert main(["analyze", "gradnorm", "--train-size", "200", "--epochs", "2", "--quiet", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]
