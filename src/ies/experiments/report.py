"""Run folders on disk, and the comparison table built from them.

A run folder holds ``config.json`` (resolved config + environment), ``metrics.csv``
(one row per epoch), ``summary.json`` and ``per_sample.npz``. A comparison folder holds
run folders under ``runs/`` plus ``summary.md``, ``comparison.json`` and PNG plots, all
rebuilt from the run folders alone by :func:`write_comparison`.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .engine import RunResult

__all__ = ["environment", "save_run", "load_run", "find_runs", "run_label", "aggregate", "format_table",
           "write_comparison", "TIMING_NOTE"]

TIMING_NOTE = (
    "Training wall time counts the training loop and the forward-only scoring pass of excluded samples; "
    "test/validation evaluation is not counted. Methods were run alternating, seed by seed, in one process; "
    "speedup is the median over seeds of the per-seed ratio (baseline time / method time). Headline accuracy "
    "is the final epoch's test accuracy (never best-on-test; that figure appears only labelled as such)."
)


def environment() -> Dict[str, Any]:
    import torch

    from .. import __version__

    return {
        "ies_version": __version__,
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_run(result: RunResult, run_dir: os.PathLike, *, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write a run folder; returns its path."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"config": result.config, "environment": environment(), **(extra or {})}
    _atomic_write(d / "config.json", json.dumps(cfg, indent=2, default=str))
    if result.epochs:
        keys = list(result.epochs[0].keys())
        for row in result.epochs[1:]:
            keys += [k for k in row if k not in keys]
        tmp = d / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for row in result.epochs:
                w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
        os.replace(tmp, d / "metrics.csv")
    _atomic_write(d / "summary.json", json.dumps(result.summary, indent=2, default=str))
    if result.per_sample:
        import numpy as np

        np.savez(d / "per_sample.npz", **{k: v.numpy() for k, v in result.per_sample.items()})
    return d


def _num(v: str) -> Any:
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def load_run(run_dir: os.PathLike) -> Dict[str, Any]:
    """Read a run folder back: ``{"dir", "config", "environment", "summary", "epochs"}``."""
    d = Path(run_dir)
    missing = [f for f in ("config.json", "summary.json", "metrics.csv") if not (d / f).exists()]
    if missing:
        raise FileNotFoundError(f"{d} is not a complete run folder (missing {', '.join(missing)}); "
                                "pass folders written by `ies train` or `ies compare`")
    meta = json.loads((d / "config.json").read_text())
    with open(d / "metrics.csv", newline="") as f:
        epochs = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return {"dir": str(d), "config": meta["config"], "environment": meta.get("environment", {}),
            "label": meta.get("label"), "summary": json.loads((d / "summary.json").read_text()), "epochs": epochs}


def find_runs(paths: Sequence[os.PathLike]) -> List[Path]:
    """Run folders in ``paths``: each is a run folder or contains run folders (searched recursively)."""
    out: List[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if (p / "summary.json").exists() and (p / "config.json").exists():
            out.append(p)
        else:
            out += sorted(q.parent for q in p.rglob("summary.json") if (q.parent / "config.json").exists())
    if not out:
        raise FileNotFoundError(f"no run folders (with config.json and summary.json) under {', '.join(map(str, paths))}")
    return out


def run_label(config: Dict[str, Any]) -> str:
    """``method`` or ``method(k=v, ...)`` from a run's config."""
    params = config.get("method_params") or {}
    if not params:
        return config["method"]
    return f"{config['method']}(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"


def _mean_std(xs: List[float]) -> tuple:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(runs: List[Dict[str, Any]], baseline: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per label: accuracy mean ± std over seeds, savings, wall time and speedup vs ``baseline``."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r.get("label") or run_label(r["config"]), []).append(r)
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
            "epochs_run": statistics.fmean(r["summary"]["epochs_run"] for r in rs),
            "best_test_acc_for_paper_comparison_only": statistics.fmean(
                r["summary"]["best_test_acc_for_paper_comparison_only"] for r in rs),
            "saving_note": rs[0]["summary"].get("saving_note", ""),
        }
        if all("val_chosen_test_acc" in r["summary"] for r in rs):
            row["val_chosen_test_acc_mean"] = statistics.fmean(r["summary"]["val_chosen_test_acc"] for r in rs)
        rows.append(row)
    return rows


def format_table(rows: List[Dict[str, Any]], markdown: bool = False) -> str:
    """The side-by-side table (plain text for the terminal, or Markdown)."""
    head = ["method", "final test acc (%)", "backprop saved", "compute saved", "train wall (s)", "speedup", "seeds"]
    body = []
    for r in rows:
        body.append([
            r["label"],
            f"{r['final_test_acc_mean']:.2f} ± {r['final_test_acc_std']:.2f}",
            f"{100 * r['backprop_saved']:.1f}%",
            f"{100 * r['compute_saved']:.1f}%",
            f"{r['wall_seconds']:.1f}",
            "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
            str(len(r["seeds"])),
        ])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def write_comparison(run_dirs: Sequence[os.PathLike], out_dir: os.PathLike, *, baseline: Optional[str] = None,
                     title: str = "IES comparison", command: Optional[str] = None) -> Dict[str, Any]:
    """(Re)build ``summary.md``, ``comparison.json`` and the plots from saved run folders."""
    from .plots import plot_comparison

    runs = [load_run(d) for d in run_dirs]
    rows = aggregate(runs, baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_comparison(runs, out)
    cfg0 = runs[0]["config"]
    env = runs[0]["environment"]
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [
        f"Dataset `{cfg0['dataset']}` (train size {cfg0.get('train_size') or 'default'}), model `{cfg0['model']}`, "
        f"{cfg0['epochs']} epochs, batch {cfg0['batch_size']}, optimizer `{cfg0['optimizer']}` lr {cfg0['lr']}. "
        f"ies {env.get('ies_version')}, torch {env.get('torch_version')}, Python {env.get('python_version')}, "
        f"{env.get('cpu_count')} CPUs ({env.get('platform')}).",
        "",
        format_table(rows, markdown=True),
        "",
        TIMING_NOTE,
        "",
    ]
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
    _atomic_write(out / "comparison.json", json.dumps(payload, indent=2, default=str))
    return payload
