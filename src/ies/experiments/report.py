"""The comparison table and report built from saved run folders.

A comparison folder holds run folders under ``runs/`` (see :mod:`ies.experiments.runs`)
plus ``summary.md``, ``comparison.json`` and PNG plots, all rebuilt from the run folders
alone by :func:`write_comparison`. Incomplete runs, and labels with unequal seed counts,
are refused unless ``include_incomplete`` is set.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .data import DATASET_INPUTS
from .runs import environment, find_runs, load_run, run_label, save_run
from .tables import table, write_json

__all__ = ["environment", "save_run", "load_run", "find_runs", "run_label", "aggregate", "format_table",
           "write_comparison", "check_complete", "config_line", "TIMING_NOTE", "speedup_limit"]

TIMING_NOTE = (
    "Training wall time counts the training loop and the forward-only probe pass of excluded samples; "
    "test/validation evaluation is not counted. Methods were run alternating, seed by seed, in one process; "
    "speedup is the median over seeds of the per-seed ratio (baseline time / method time); limit is the speedup "
    "the run's own measurements allow, 1 / ((1 - f) + f_p * p) with f the sample-epochs not trained, f_p those "
    "probed and p the measured probe cost per sample relative to a training step. Headline accuracy "
    "is the final epoch's test accuracy (never best-on-test; that figure appears only labelled as such)."
)


def config_line(cfg: Dict[str, Any], env: Dict[str, Any]) -> str:
    """One sentence naming the data, model, optimizer and software a report's runs used."""
    return (f"Dataset `{cfg['dataset']}` (train size {cfg.get('train_size') or 'default'}), model `{cfg['model']}`, "
            f"batch {cfg['batch_size']}, optimizer `{cfg['optimizer']}` lr {cfg['lr']}. "
            f"ies {env.get('ies_version')}, torch {env.get('torch_version')}, Python {env.get('python_version')}, "
            f"{env.get('cpu_count')} CPUs, {env.get('torch_threads')} torch thread(s) ({env.get('platform')}).")


def _group(runs: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r.get("label") or run_label(r["config"]), []).append(r)
    return groups


def check_complete(runs: List[Dict[str, Any]]) -> None:
    """``ValueError`` if a run is not complete or the labels have unequal seed counts."""
    bad = [f"{r['dir']} ({r['status']})" for r in runs if r["status"] != "complete"]
    if bad:
        raise ValueError(f"{len(bad)} run(s) are not complete: {'; '.join(bad)}. Finish them (rerun the command "
                         "with --resume) or pass --include-incomplete to report their epochs so far")
    counts = {label: len(rs) for label, rs in _group(runs).items()}
    if len(set(counts.values())) > 1:
        raise ValueError("unequal seed counts (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "); "
                         "finish the missing runs with --resume, or pass --include-incomplete to compare anyway")


def _mean_std(xs: List[float]) -> tuple:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def speedup_limit(rows: List[Dict[str, Any]], num_samples: Optional[int]) -> Optional[float]:
    """The wall-clock speedup a run could reach, from its own per-epoch measurements (issue 11).

    ``f`` = sample-epochs not trained, ``f_p`` = sample-epochs probed, ``p`` = measured probe
    seconds per sample over training seconds per sample: an epoch costs ``(1 - f) + f_p * p`` of
    a full one, so the speedup over no removal is at most ``1 / ((1 - f) + f_p * p)``.
    """
    try:
        trained = sum(float(r["backpropagated"]) for r in rows)
        probed = sum(float(r["probed"]) for r in rows)
        train_s = sum(float(r["train_seconds"]) for r in rows)
        probe_s = sum(float(r["probe_seconds"]) for r in rows)
    except (KeyError, TypeError, ValueError):  # rows of a run that does not record these
        return None
    done = (num_samples or 0) * len(rows)
    if not (done and trained and train_s > 0):
        return None
    p = (probe_s / probed) / (train_s / trained) if probed else 0.0
    return 1.0 / (trained / done + (probed / done) * p)


def _median_or_none(xs: List[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


_METRICS = {"segmentation": "mIoU", "detection": "mAP50"}  # what test_acc holds for dense tasks (experiments/tasks.py)


def aggregate(runs: List[Dict[str, Any]], baseline: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per label: accuracy mean ± std over seeds, savings, wall time and speedup vs ``baseline``."""
    groups = _group([r for r in runs if r["summary"] is not None])  # a run with no epoch done has nothing to add
    if baseline is None:
        baseline = "none" if "none" in groups else next(iter(groups))
    base_wall = {r["config"]["seed"]: r["summary"]["wall_seconds"] for r in groups.get(baseline, [])}
    rows = []
    for label, rs in groups.items():
        accs = [r["summary"]["final_test_acc"] for r in rs]
        ratios = [base_wall[r["config"]["seed"]] / r["summary"]["wall_seconds"]
                  for r in rs if r["config"]["seed"] in base_wall and r["summary"]["wall_seconds"] > 0]
        m, s = _mean_std(accs)
        row = {
            "label": label,
            "method": rs[0]["config"]["method"],
            "seeds": sorted(r["config"]["seed"] for r in rs),
            "final_test_acc_mean": m,
            "final_test_acc_std": s,
            "backprop_saved": statistics.fmean(r["summary"]["backprop_saved"] for r in rs),
            "compute_saved": statistics.fmean(r["summary"]["compute_saved"] for r in rs),
            "wall_seconds": statistics.fmean(r["summary"]["wall_seconds"] for r in rs),
            "speedup": statistics.median(ratios) if ratios else None,
            "speedup_limit": _median_or_none([speedup_limit(r["epochs"], r["summary"].get("num_train")) for r in rs]),
            "epochs_run": statistics.fmean(r["summary"]["epochs_run"] for r in rs),
            "best_test_acc_for_paper_comparison_only": statistics.fmean(
                r["summary"]["best_test_acc_for_paper_comparison_only"] for r in rs),
            "saving_note": rs[0]["summary"].get("saving_note", ""),
            "metric": _METRICS.get(DATASET_INPUTS.get(rs[0]["config"]["dataset"], ""), "acc"),
        }
        if all("val_chosen_test_acc" in r["summary"] for r in rs):
            row["val_chosen_test_acc_mean"] = statistics.fmean(r["summary"]["val_chosen_test_acc"] for r in rs)
        rows.append(row)
    return rows


def format_table(rows: List[Dict[str, Any]], markdown: bool = False) -> str:
    """The side-by-side table (plain text for the terminal, or Markdown)."""
    head = ["method", f"final test {rows[0].get('metric', 'acc') if rows else 'acc'} (%)", "backprop saved", "compute saved", "train wall (s)", "speedup",
            "limit", "seeds"]
    body = []
    for r in rows:
        body.append([
            r["label"],
            f"{r['final_test_acc_mean']:.2f} ± {r['final_test_acc_std']:.2f}",
            f"{100 * r['backprop_saved']:.1f}%",
            f"{100 * r['compute_saved']:.1f}%",
            f"{r['wall_seconds']:.1f}",
            "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
            "-" if r.get("speedup_limit") is None else f"{r['speedup_limit']:.2f}x",
            str(len(r["seeds"])),
        ])
    return table(head, body, markdown=markdown)


def write_comparison(run_dirs: Sequence[os.PathLike], out_dir: os.PathLike, *, baseline: Optional[str] = None,
                     title: str = "IES comparison", command: Optional[str] = None,
                     include_incomplete: bool = False) -> Dict[str, Any]:
    """(Re)build ``summary.md``, ``comparison.json`` and the plots from saved run folders.

    Refuses (``ValueError``) incomplete runs and unequal seed counts unless ``include_incomplete``.
    """
    from .plots import plot_comparison

    runs = [load_run(d) for d in run_dirs]
    if not include_incomplete:
        check_complete(runs)
    runs = [r for r in runs if r["summary"] is not None]
    if not runs:
        raise ValueError("none of the runs has finished an epoch; nothing to report")
    rows = aggregate(runs, baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_comparison(runs, out)
    cfg0, env = runs[0]["config"], runs[0]["environment"]
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [config_line(cfg0, env) + f" {cfg0['epochs']} epochs.", "", format_table(rows, markdown=True), "",
              TIMING_NOTE, ""]
    partial = [r["dir"] for r in runs if r["status"] != "complete"]
    if partial:
        lines += [f"Incomplete runs included (their last epoch stands for the final one): {', '.join(partial)}", ""]
    notes = {r["label"]: r["saving_note"] for r in rows if r["saving_note"]}
    if notes:
        lines += ["How each method's saving is counted:", ""] + [f"- `{k}`: {v}" for k, v in notes.items()] + [""]
    best = [f"{r['label']}: {r['best_test_acc_for_paper_comparison_only']:.2f}" for r in rows]
    lines += ["Best-on-test accuracy (mean over seeds; for comparison with the paper only, not a valid estimate): "
              + "; ".join(best), ""]
    for name, path in plots.items():
        lines += [f"![{name}]({Path(path).name})", ""]
    (out / "summary.md").write_text("\n".join(lines))
    payload = {"rows": rows, "runs": [r["dir"] for r in runs], "plots": {k: str(v) for k, v in plots.items()},
               "command": command}
    write_json(out / "comparison.json", payload)
    return payload
