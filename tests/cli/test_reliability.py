"""Killed and interrupted runs resume to exactly the metrics of an uninterrupted run (CPU).

The "reliability" group: a real ``ies`` subprocess is killed (SIGKILL) or interrupted
(SIGINT) once ``metrics.csv`` has at least two rows, then continued with ``--resume``.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ies.cli import main

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# Enough epochs that the process is still training when the second row lands.
RUN = ["--epochs", "40", "--train-size", "400", "--quiet"]
WALL = {"train_seconds", "probe_seconds", "wall_seconds", "probe_share"}


def _rows(path: Path) -> list:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _without_wall(rows: list) -> list:
    return [{k: v for k, v in r.items() if k not in WALL} for r in rows]


def _default_sigint() -> None:
    # A shell's background job (`pytest ... &`) ignores SIGINT, and a child inherits that; Python then
    # installs no KeyboardInterrupt handler and the SIGINT test would see a run that never stops.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(argv: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ies", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)


def _wait_for_rows(proc: subprocess.Popen, metrics: Path, n: int = 2) -> None:
    # A safety net against a hung child, not a speed requirement.
    deadline = time.monotonic() + 600
    while len(_rows(metrics)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child never wrote two metrics rows"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "r"
    assert main(["train", *RUN, "--out", str(out)]) == 0
    return _rows(out / "metrics.csv")


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "r"
    proc = _start(["train", *RUN, "--out", str(out)])
    _wait_for_rows(proc, out / "metrics.csv")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "running" and status["epochs_done"] < 40  # killed mid-run, no chance to clean up
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 2  # an unfinished run is refused
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    assert _without_wall(_rows(out / "metrics.csv")) == _without_wall(uninterrupted)


def test_sigint_saves_and_says_how_to_resume(tmp_path, uninterrupted):
    out = tmp_path / "r"
    proc = _start(["train", *RUN, "--out", str(out)])
    _wait_for_rows(proc, out / "metrics.csv")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert f"ies train --resume {out}" in err
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    assert (out / "checkpoint.pt").exists()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert _without_wall(_rows(out / "metrics.csv")) == _without_wall(uninterrupted)


def test_compare_resume_skips_finished_runs_and_continues_the_killed_one(tmp_path):
    argv = ["compare", "--methods", "none,ies", "--seeds", "1", *RUN]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0
    out = tmp_path / "c"
    proc = _start([*argv, "--out", str(out)])
    _wait_for_rows(proc, out / "runs" / "ies-seed0" / "metrics.csv")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = out / "runs" / "none-seed0" / "summary.json"
    before = done.stat().st_mtime_ns
    assert main([*argv, "--out", str(out)]) == 2  # not silently reused
    assert main([*argv, "--resume", str(out)]) == 0
    assert done.stat().st_mtime_ns == before  # the finished run was kept, not trained again
    for run in ("none-seed0", "ies-seed0"):
        assert _without_wall(_rows(out / "runs" / run / "metrics.csv")) == \
            _without_wall(_rows(ref / "runs" / run / "metrics.csv"))
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["seeds"] for r in rows] == [[0], [0]]
