"""``ies frontier`` end to end at a tiny size, through ``cli.main``."""

from __future__ import annotations

import json

import pytest

from ies import cli
from ies.experiments.frontier import frontier_gap
from ies.experiments.runs import load_run

TINY = ["--train-size", "200", "--batch-size", "50", "--seeds", "2", "--quiet"]


def test_frontier_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "front"
    rc = cli.main(["frontier", *TINY, "--epochs", "10", "--fractions", "1,0.5", "--savings", "0.2",
                   "--methods", "infobatch", "--out", str(out)])
    assert rc == 0
    payload = json.loads((out / "frontier.json").read_text())
    rows = {r["label"]: r for r in payload["rows"]}
    assert set(rows) == {"none [cos, 10 ep]", "none [cos, 5 ep]", "none [lin0, 10 ep]", "none [lin0, 5 ep]",
                         "ies(target_measure=compute, target_saving=0.2)", "random(fraction=0.2)", "infobatch"}
    assert all(r["seeds"] == [0, 1] for r in rows.values())
    rnd = rows["random(fraction=0.2)"]
    assert rnd["compute_mean"] == pytest.approx(8.0)  # 10 epochs x (1 - 0.2)
    runs = [load_run(d) for d in payload["runs"]]

    def point(label, seed):
        return next(r for r in runs if r["config"]["seed"] == seed and (
            r["config"]["method"] == "random" if label == "random" else
            r["config"]["method"] == "none" and r["config"]["optimizer"] == "adam-cos"
            and r["config"]["epochs"] == label))
    for seed, gap in zip((0, 1), rnd["gaps"]["compute vs cos"]["per_seed"]):  # recomputed from the run folders
        line = [(e, point(e, seed)["summary"]["final_test_acc"]) for e in (10, 5)]
        assert gap == pytest.approx(frontier_gap(line, 8.0, point("random", seed)["summary"]["final_test_acc"]))
    assert "time vs lin0" in rows["none [cos, 10 ep]"]["gaps"] and "time vs cos" not in rows["none [cos, 5 ep]"]["gaps"]
    assert (out / "frontier.png").stat().st_size > 0
    md = (out / "frontier.md").read_text()
    assert "gap at equal time vs cos" in md and "![frontier](frontier.png)" in md and "ies frontier" in md
    assert "report:" in capsys.readouterr().out
    assert cli.main(["frontier", *TINY, "--epochs", "10", "--fractions", "1,0.5", "--savings", "0.2",
                     "--methods", "infobatch", "--resume", str(out)]) == 0  # everything complete: nothing retrained
    assert "complete, skipped" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--schedules", "step"], "--schedules"),
    (["--optimizer", "adamw"], "--optimizer adam-cos"),
    (["--fractions", "1.5"], "fractions"),
    (["--savings", "1"], "savings"),
    (["--methods", "nosuch"], "nosuch"),
])
def test_frontier_refuses_bad_input(tmp_path, capsys, flags, message) -> None:
    assert cli.main(["frontier", *TINY, "--epochs", "3", "--savings", "", *flags, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before the output folder is made
