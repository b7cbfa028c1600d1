"""``ies tradeoff`` and ``ies budget`` end to end at a tiny size, through ``cli.main``."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ies import cli
from ies.experiments.budget import calibrate
from ies.experiments.tradeoff import tradeoff_specs

TINY = ["--train-size", "100", "--batch-size", "32", "--seeds", "1", "--quiet"]


def test_tradeoff_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "trade"
    rc = cli.main(["tradeoff", *TINY, "--epochs", "3", "--orders", "0,2", "--scale", "1,100",
                   "--fractions", "0.2,0.5", "--out", str(out)])
    assert rc == 0
    payload = json.loads((out / "tradeoff.json").read_text())
    labels = [p["label"] for p in payload["points"]]
    assert len(labels) == 1 + 2 * 2 + 2 + 2  # none, ies x 2 orders x 2 thresholds, random x 2, infobatch x 2
    assert "none" in labels and "ies(order=0, threshold=0.1)" in labels and "random(fraction=0.5)" in labels
    by_label = {p["label"]: p for p in payload["points"]}
    assert by_label["random(fraction=0.5)"]["backprop_saved"] == pytest.approx(0.5)
    assert (out / "tradeoff.png").stat().st_size > 0
    md = (out / "summary.md").read_text()
    assert "![trade-off](tradeoff.png)" in md and "| IES (order 0) |" in md and "Random Remove" in md
    assert "report:" in capsys.readouterr().out


def test_tradeoff_method_subset_and_bad_method(tmp_path, capsys) -> None:
    specs = tradeoff_specs(["random"], [2], 1e-3, [1.0], [0.1, 0.3])
    assert specs == [("random", {"fraction": 0.1}), ("random", {"fraction": 0.3})]
    assert cli.main(["tradeoff", *TINY, "--methods", "dihcl", "--out", str(tmp_path / "x")]) == 2
    assert "not supported here" in capsys.readouterr().err
    assert cli.main(["tradeoff", *TINY, "--fractions", "1.5", "--methods", "random",
                     "--out", str(tmp_path / "y")]) == 2
    assert "fraction" in capsys.readouterr().err


def test_tradeoff_without_none_names_its_speedup_baseline(tmp_path) -> None:
    out = tmp_path / "r"
    assert cli.main(["tradeoff", *TINY, "--epochs", "2", "--methods", "random", "--fractions", "0.2,0.4",
                     "--out", str(out)]) == 0
    text = (out / "summary.md").read_text()
    assert "Wall speedup is against `random(fraction=0.2)` (no `none` run was in this sweep)" in text


def test_budget_end_to_end(tmp_path) -> None:
    out = tmp_path / "budget"
    rc = cli.main(["budget", *TINY, "--epochs", "8", "--speedups", "2,3", "--calib-runs", "2",
                   "--out", str(out)])
    assert rc == 0
    payload = json.loads((out / "budget.json").read_text())
    rows = payload["rows"]
    kinds = [(r["speedup_target"], r["kind"], r["method"]) for r in rows]
    assert kinds[0] == (1.0, "reference", "none")
    assert (2.0, "fewer epochs", "none") in kinds and (3.0, "fewer epochs", "none") in kinds
    for m in ("random", "infobatch", "ies"):
        assert (2.0, "selection", m) in kinds and (3.0, "selection", m) in kinds
        assert (3.0, "halved epochs + selection", m) in kinds
    by = {(r["speedup_target"], r["kind"], r["method"]): r for r in rows}
    assert by[(2.0, "fewer epochs", "none")]["epochs"] == 4
    assert by[(2.0, "selection", "random")]["compute_speedup"] == pytest.approx(2.0, rel=0.02)
    assert by[(3.0, "halved epochs + selection", "random")]["compute_speedup"] == pytest.approx(3.0, rel=0.05)
    assert {c["method"] for c in payload["calibrations"]} == {"random", "infobatch", "ies"}
    md = (out / "summary.md").read_text()
    assert "compute speedup vs full" in md and "Knob calibration" in md


def test_budget_refuses_bad_input(tmp_path, capsys) -> None:
    assert cli.main(["budget", *TINY, "--methods", "dihcl", "--out", str(tmp_path / "a")]) == 2
    assert "not supported here" in capsys.readouterr().err
    assert cli.main(["budget", *TINY, "--speedups", "1", "--out", str(tmp_path / "b")]) == 2
    assert "--speedups" in capsys.readouterr().err


def test_calibrate_bisects_and_interpolates() -> None:
    calls = []

    def measure(v: float) -> float:
        calls.append(v)
        return min(1.0, v / 2)  # saving = knob / 2

    out = calibrate(measure, 0.3, 0.0, 1.0, max_runs=8, tolerance=0.005)
    assert out["reached"] and out["value"] == pytest.approx(0.6, abs=0.02) and len(calls) <= 4
    sat = calibrate(lambda v: min(0.2, v), 0.5, 0.0, 1.0, max_runs=8, tolerance=0.01)
    assert not sat["reached"] and sat["saving"] == pytest.approx(0.2) and len(sat["trials"]) < 8
    known = calibrate(measure, 0.25, 0.0, 1.0, max_runs=8, tolerance=0.01, known=[(0.5, 0.25)])
    assert known["reached"] and known["trials"] == [] and known["value"] == 0.5
    logc = calibrate(lambda v: 0.1 * (3 + math.log10(v)), 0.2, 1e-6, 10.0, max_runs=8,
                     tolerance=0.005, log=True)
    assert logc["reached"] and logc["value"] == pytest.approx(0.1, rel=0.15)


def test_train_early_stop_without_val_split_errors(tmp_path, capsys) -> None:
    rc = cli.main(["train", "--method", "early-stop", "--train-size", "100", "--epochs", "2", "--quiet",
                   "--out", str(tmp_path / "es")])
    assert rc == 2
    assert "--val-fraction" in capsys.readouterr().err


def test_list_shows_every_method(capsys) -> None:
    from ies.policies import policy_names

    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    for n in policy_names():
        assert f"  {n}:" in text
