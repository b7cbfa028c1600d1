"""``ies frontier``'s engine: the interpolation, the run plan, the linear-to-zero schedule, resume."""

from __future__ import annotations

import json

import pytest
import torch

from ies.experiments.config import RunConfig
from ies.experiments.data import load_dataset
from ies.experiments.engine import build_optimizer, run_training
from ies.experiments.frontier import (frontier_gap, frontier_gaps, interpolate, method_specs, plain_epochs,
                                      plan_frontier, run_frontier, schedule_optimizer)
from ies.experiments.runs import load_run

LINE = [(10.0, 90.0), (20.0, 92.0), (40.0, 93.0)]


@pytest.mark.parametrize("points, x, y, gap", [
    (LINE, 10.0, 90.5, 0.5),  # on a plain point
    (LINE, 15.0, 91.0, 0.0),  # halfway between 90 and 92
    (LINE, 30.0, 92.0, -0.5),  # halfway between 92 and 93
    (LINE, 40.0, 94.0, 1.0),  # the last point
    (LINE, 9.99, 95.0, None),  # left of the curve: outside
    (LINE, 40.01, 95.0, None),  # right of it: outside
    (list(reversed(LINE)), 25.0, 92.0, -0.25),  # order of the points does not matter
    ([(5.0, 80.0)], 5.0, 81.0, 1.0),  # a single point, hit exactly
    ([], 5.0, 81.0, None),
])
def test_gap_to_the_frontier(points, x, y, gap) -> None:
    got = frontier_gap(points, x, y)
    assert got == pytest.approx(gap) if gap is not None else got is None


def test_interpolate_is_linear_between_neighbours() -> None:
    assert interpolate(LINE, 12.5) == pytest.approx(90.5)
    assert interpolate(LINE, 35.0) == pytest.approx(92.75)


def test_gaps_are_per_seed_against_the_same_seeds_plain_runs() -> None:
    def pt(label, kind, seed, wall, acc, sched=None, epochs=8):
        return {"label": label, "method": "none" if kind == "plain" else "ies", "kind": kind, "schedule": sched,
                "seed": seed, "epochs": epochs, "acc": acc, "wall": wall, "compute": wall, "compute_saved": 0.0,
                "backprop_saved": 0.0}
    pts = [pt("p8", "plain", 0, 8.0, 90.0, "cos"), pt("p4", "plain", 0, 4.0, 88.0, "cos", 4),
           pt("p8", "plain", 1, 10.0, 91.0, "cos"), pt("p4", "plain", 1, 5.0, 87.0, "cos", 4),
           pt("m", "method", 0, 6.0, 89.5), pt("m", "method", 1, 12.0, 95.0)]
    rows = {r["label"]: r for r in frontier_gaps(pts)}
    g = rows["m"]["gaps"]["time vs cos"]
    assert g["per_seed"] == [pytest.approx(0.5), None]  # seed 0: 89.5 - 89.0; seed 1: right of its curve
    assert g["mean"] == pytest.approx(0.5) and g["outside"] == 1
    assert "time vs cos" not in rows["p8"]["gaps"]  # a plain run is its own frontier


def test_plain_lengths_and_the_alternating_plan() -> None:
    assert plain_epochs(80, (1, 2 / 3, 1 / 2, 1 / 3, 1 / 4)) == [80, 53, 40, 27, 20]
    assert plain_epochs(4, (1, 0.5, 0.4)) == [4, 2]  # 2 and round(1.6) = 2 appear once
    with pytest.raises(ValueError, match="fractions"):
        plain_epochs(10, (1.5,))
    specs = method_specs([0.5], [("ies", {}), ("random", {"fraction": 0.5})])
    assert specs == [("ies", {"target_saving": 0.5, "target_measure": "compute"}), ("random", {"fraction": 0.5}),
                     ("ies", {})]  # the repeated Random Remove spec is listed once
    base = RunConfig(method="none", train_size=200, epochs=8)
    runs = plan_frontier(base, fractions=(1, 0.5), schedules=("cos", "lin0"), specs=specs, seeds=(0, 1))
    labels = [r.label for r in runs]
    assert labels[:7] == ["none [cos, 8 ep]", "ies(target_measure=compute, target_saving=0.5)", "none [cos, 4 ep]",
                          "random(fraction=0.5)", "none [lin0, 8 ep]", "ies", "none [lin0, 4 ep]"]
    assert labels[7:] == labels[:7] and [r.config.seed for r in runs] == [0] * 7 + [1] * 7  # seed-major
    by = {r.label: r.config for r in runs[:7]}
    assert by["none [lin0, 4 ep]"].optimizer == "adam-lin0" and by["none [cos, 4 ep]"].optimizer == "adam-cos"
    assert by["ies"].optimizer == "adam-cos" and by["ies"].epochs == 8
    assert schedule_optimizer("sgd", "lin0") == "sgd-lin0"
    with pytest.raises(ValueError, match="--optimizer"):
        schedule_optimizer("adamw", "cos")


def test_linear_schedule_is_compressed_and_reaches_zero_at_the_end() -> None:
    for epochs in (3, 12):
        cfg = RunConfig(method="none", train_size=200, epochs=epochs, optimizer="adam-lin0").resolved()
        _, factor = build_optimizer(cfg, torch.nn.Linear(2, 2))
        assert factor(0) == 1.0 and factor(epochs / 2) == pytest.approx(0.5) and factor(epochs) == 0.0
    cfg = RunConfig(method="none", train_size=200, epochs=3, batch_size=50, optimizer="adam-lin0", lr=0.01)
    rows = run_training(cfg).epochs  # 4 steps an epoch, 12 in all, lr set per step
    assert [r["lr"] for r in rows] == pytest.approx([0.01 * (12 - s) / 12 for s in (3, 7, 11)])  # each epoch's last step
    assert rows[-1]["lr"] == pytest.approx(0.01 / 12)  # the last step's lr: one step from zero


def test_resume_equals_uninterrupted(tmp_path) -> None:
    base = RunConfig(method="none", train_size=200, epochs=4, batch_size=50)
    data = load_dataset("mnist1d", train_size=200)
    kw = dict(fractions=(1, 0.5), schedules=("lin0",), specs=[("random", {"fraction": 0.5})], seeds=(0,), data=data)
    whole = run_frontier(base, tmp_path / "whole", **kw)
    seen = []

    def progress(total, desc):
        def on_epoch(row):
            seen.append(desc)
            if len(seen) == 6:  # the second run's second epoch: resume continues from its first
                raise KeyboardInterrupt
        return on_epoch
    with pytest.raises(KeyboardInterrupt):
        run_frontier(base, tmp_path / "cut", progress=progress, **kw)
    cut = run_frontier(base, tmp_path / "cut", resume=True, **kw)
    assert [r["label"] for r in cut["rows"]] == [r["label"] for r in whole["rows"]]
    for a, b in zip(whole["runs"], cut["runs"]):
        ea, eb = load_run(a)["epochs"], load_run(b)["epochs"]
        assert [r["test_acc"] for r in ea] == [r["test_acc"] for r in eb]
        assert [r["train_loss"] for r in ea] == [r["train_loss"] for r in eb]
    assert json.loads((tmp_path / "cut" / "frontier.json").read_text())["rows"][0]["seeds"] == [0]
