"""Every benchmarks/*.py script runs at a tiny size, so a script that breaks or drifts from the API fails CI.

Each script is run as the docs run it (``python benchmarks/<name>.py``, a fresh process) with its
tiny flags, and its output is checked for the line or table it exists to print. A new script
needs an entry here (the first test fails until it has one).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

# script -> (arguments, a piece of the output it must print)
TINY = {
    "bench_bookkeeping.py": (["--tiny"], "| 2,000 |"),
    "bench_overhead.py": (["--tiny"], "CPU overhead of the tracker"),
    "bench_distributed.py": (["--tiny"], "received bytes per recorded sample"),
    "bench_forward_batch.py": (["--models", "mnist1d-cnn", "--batch-sizes", "64", "--samples", "128", "--repeats", "1"],
                               "mnist1d-cnn"),
    "gpu_check.py": (["--device", "cpu", "--tiny"], "| ies |"),
    "probe_memory.py": (["--tiny"], "peak RSS MiB"),
    "save_cost.py": (["--tiny"], "save per epoch"),
    "tables.py": (["runs", "{runs}"], "| none |"),
    "text_hf.py": (["--tiny"], "| ies target 0.2 |"),
    "text_who.py": (["--tiny"], "of excluded sample-epochs"),
}


def run(args: List[str], timeout: int = 300) -> str:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_every_script_has_a_tiny_run() -> None:
    assert sorted(p.name for p in BENCH.glob("*.py")) == sorted(TINY)


@pytest.fixture(scope="module")
def compare_runs(tmp_path_factory) -> Path:
    """A one-epoch `ies compare` of none and ies on 100 MNIST-1D samples: what tables.py reads."""
    out = tmp_path_factory.mktemp("compare") / "runs"
    run(["-m", "ies", "compare", "--methods", "none,ies", "--seeds", "1", "--train-size", "100", "--epochs", "1",
         "--quiet", "--out", str(out)])
    return out


@pytest.mark.parametrize("script", sorted(TINY))
def test_script_runs_at_a_tiny_size(script: str, request) -> None:
    args, expect = TINY[script]
    if "{runs}" in args:
        args = [a.replace("{runs}", str(request.getfixturevalue("compare_runs"))) for a in args]
    assert expect in run([str(BENCH / script), *args])
