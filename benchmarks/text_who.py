"""Which samples IES excludes on the text task: the flipped-label share of the excluded sample-epochs.

``text-topics`` flips 20% of its training labels (``ies.experiments.text``). For every IES run folder
of a frontier or compare sweep on it, this prints the flipped share of the sample-epochs IES
excluded (``times_excluded`` in ``per_sample.npz``) and how many flipped and clean samples were never
excluded. A share below 20% means IES excludes clean samples more readily, so the samples that train
are richer in wrong labels than the data set.

Run: ``.venv/bin/python benchmarks/text_who.py runs/frontier-text`` (docs/benchmarks/frontier.md
quotes it); ``--tiny``: one 200-sample target-mode run in process, a quick check that the script runs
(tests/benchmarks/test_scripts.py).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from ies.experiments.config import RunConfig
from ies.experiments.engine import run_training
from ies.experiments.text import flipped_mask


def line(name: str, excluded: np.ndarray, flipped: np.ndarray) -> str:
    share = excluded[flipped].sum() / max(excluded.sum(), 1)
    return (f"{name}: flipped {flipped.mean():.1%} of samples, {share:.1%} of excluded sample-epochs; never excluded: "
            f"flipped {np.mean(excluded[flipped] == 0):.1%}, clean {np.mean(excluded[~flipped] == 0):.1%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="?", help="a frontier or compare folder on text-topics (its runs/ subfolder)")
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    if a.tiny:
        cfg = RunConfig(dataset="text-topics", train_size=200, epochs=10, batch_size=50, method="ies",
                        method_params={"target_saving": 0.2})
        res = run_training(cfg)
        excluded = res.per_sample["times_excluded"].numpy()
        print(line("tiny ies(target_saving=0.2)", excluded, flipped_mask(200, 42).numpy()))
        return
    if a.sweep is None:
        p.error("give a sweep folder (e.g. runs/frontier-text) or --tiny")
    for run in sorted(Path(a.sweep, "runs").iterdir()):
        cfg = json.loads((run / "config.json").read_text())["config"]
        if cfg["dataset"] != "text-topics" or cfg["method"] != "ies" or not (run / "per_sample.npz").exists():
            continue
        excluded = np.load(run / "per_sample.npz")["times_excluded"]
        print(line(run.name, excluded, flipped_mask(cfg["train_size"], cfg["data_seed"]).numpy()))


if __name__ == "__main__":
    main()
