"""Tables (and a trade-off plot) from `ies compare` folders, for docs/benchmarks.

Every figure comes from the run folders given; nothing is typed in by hand.

    .venv/bin/python benchmarks/tables.py control  RUNS_DIR    # target mode: asked vs achieved saving
    .venv/bin/python benchmarks/tables.py tradeoff RUNS_DIR [--plot OUT.png]   # accuracy at equal saving
    .venv/bin/python benchmarks/tables.py probing  RUNS_DIR    # probe schedules: speedup vs its limits
    .venv/bin/python benchmarks/tables.py runs     RUNS_DIR    # one row per method: acc, saving, wall
    .venv/bin/python benchmarks/tables.py seeds    DIR [DIR ...]   # per-seed accuracies across folders (budgets)

Speedups are per seed (the reference and the method ran in the same process, one after the
other), then the median over seeds. "Free-probing limit" is 1/(1-f), f the backprop saved;
"probing limit" is 1/((1-f) + f_p·p) with f_p the share of sample-epochs probed and p the
measured probe cost per sample relative to a training step, both from the runs themselves.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

from ies.experiments.runs import find_runs, load_run


def _runs(root: str) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """``{label: {seed: run}}`` of the complete runs under ``root``."""
    out: Dict[str, Dict[int, Dict[str, Any]]] = defaultdict(dict)
    for d in find_runs([root]):
        r = load_run(d)
        if r["status"] != "complete":
            print(f"skipping incomplete run {d}", file=sys.stderr)
            continue
        out[r["label"]][int(r["config"]["seed"])] = r
    return dict(out)


def _ms(xs: List[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def _acc(runs: Dict[int, Dict[str, Any]]) -> List[float]:
    return [r["summary"]["final_test_acc"] for _, r in sorted(runs.items())]


def _saved(runs: Dict[int, Dict[str, Any]], key: str = "backprop_saved") -> float:
    return statistics.mean(r["summary"][key] for r in runs.values())


def _target(label: str) -> float:
    for part in label.replace("(", ",").replace(")", ",").split(","):
        if part.strip().startswith("target_saving="):
            return float(part.split("=")[1])
    return float("nan")


def control(root: str) -> None:
    runs = _runs(root)
    print("| target | achieved backprop saving (per seed) | within ±2 points | final test acc (%) |")
    print("|---|---|---|---|")
    for label in sorted((k for k in runs if "target_saving" in k), key=_target):
        t = _target(label)
        got = [r["summary"]["backprop_saved"] for _, r in sorted(runs[label].items())]
        ok = all(abs(g - t) <= 0.02 for g in got)
        print(f"| {100 * t:.0f}% | {' / '.join(f'{100 * g:.2f}%' for g in got)} | {'yes' if ok else 'NO'} | "
              f"{_ms(_acc(runs[label]))} |")


def _family(label: str) -> str:
    return label.split("(")[0].split(":")[0]


def tradeoff(root: str, plot: str = "") -> None:
    runs = _runs(root)
    ref = runs.get("none")
    print("| method | backprop saved | compute saved | final test acc (%) | vs none (paired, points) | seeds |")
    print("|---|---|---|---|---|---|")
    rows = sorted(runs.items(), key=lambda kv: (_family(kv[0]), _saved(kv[1])))
    for label, rs in rows:
        acc = _acc(rs)
        diff = ""
        common = sorted(set(rs) & set(ref or {}))
        if ref is not None and label != "none" and common:  # paired on the seeds both have
            d = [rs[k]["summary"]["final_test_acc"] - ref[k]["summary"]["final_test_acc"] for k in common]
            diff = f"{statistics.mean(d):+.2f}"
        print(f"| {label} | {100 * _saved(rs):.1f}% | {100 * _saved(rs, 'compute_saved'):.1f}% | {_ms(acc)} | "
              f"{diff} | {len(acc)} |")
    if plot:
        _plot(runs, plot)


def _plot(runs: Dict[str, Dict[int, Dict[str, Any]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fams: Dict[str, List[tuple]] = defaultdict(list)
    for label, rs in runs.items():
        acc = _acc(rs)
        fams[_family(label)].append((100 * _saved(rs), statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0))
    for fam, pts in sorted(fams.items()):
        pts.sort()
        if fam == "none":
            ax.axhline(pts[0][1], color="k", ls="--", lw=1, label="none (no removal)")
            continue
        name = {"ies": "IES (target saving)", "random": "Random Remove", "infobatch": "Small-Loss & Rescale (InfoBatch)"}
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=name.get(fam, fam))
    ax.set_xlabel("backprop saved (%)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def _probe_cost(run: Dict[str, Any]) -> float:
    """Measured probe seconds per probed sample over train seconds per trained sample (the run's totals)."""
    e = run["epochs"]
    probed = sum(float(r["probed"]) for r in e)
    trained = sum(float(r["backpropagated"]) for r in e)
    ps = sum(float(r["probe_seconds"]) for r in e)
    ts = sum(float(r["train_seconds"]) for r in e)
    return (ps / probed) / (ts / trained) if probed and trained and ts else float("nan")


def probing(root: str) -> None:
    runs = _runs(root)
    ref = runs["none"]
    n_every = runs.get("ies")
    print("| setting | final test acc (%) | vs every-epoch (points) | backprop saved | probed per sample-epoch | "
          "probe share of wall | re-inclusions | wall speedup (median) | free-probing limit | share of limit | "
          "probing limit (measured p) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, rs in sorted(runs.items()):
        if label == "none":
            continue
        seeds = sorted(set(rs) & set(ref))
        sp = [ref[s]["summary"]["wall_seconds"] / rs[s]["summary"]["wall_seconds"] for s in seeds]
        f = _saved(rs)
        n = rs[seeds[0]]["summary"]["num_train"]
        epochs = len(rs[seeds[0]]["epochs"])
        fp = statistics.mean(r["summary"]["samples_probed"] for r in rs.values()) / (n * epochs)
        p = statistics.median(_probe_cost(r) for r in rs.values())
        limit, plimit = 1 / (1 - f), 1 / ((1 - f) + fp * p)
        share = statistics.mean(r["summary"]["probe_share"] for r in rs.values())
        re = statistics.mean(r["summary"]["reincluded"] for r in rs.values())
        acc = _acc(rs)
        vs = ""
        if n_every is not None and label != "ies":
            vs = f"{statistics.mean(a - b for a, b in zip(acc, _acc(n_every))):+.2f}"
        med = statistics.median(sp)
        print(f"| {label} | {_ms(acc)} | {vs} | {100 * f:.1f}% | {fp:.3f} | {100 * share:.1f}% | {re:.0f} | "
              f"{med:.2f}x ({' / '.join(f'{x:.2f}' for x in sp)}) | {limit:.2f}x | {100 * med / limit:.0f}% | "
              f"{plimit:.2f}x (p = {p:.2f}) |")
    walls = " / ".join(f"{r['summary']['wall_seconds']:.1f}" for _, r in sorted(ref.items()))
    print(f"\nnone: {_ms(_acc(ref))}; wall per seed (s): {walls}")


def plain(root: str) -> None:
    runs = _runs(root)
    print("| method | final test acc (%) | backprop saved | compute saved | wall (s, mean) | seeds |")
    print("|---|---|---|---|---|---|")
    for label, rs in sorted(runs.items()):
        wall = statistics.mean(r["summary"]["wall_seconds"] for r in rs.values())
        print(f"| {label} | {_ms(_acc(rs))} | {100 * _saved(rs):.1f}% | {100 * _saved(rs, 'compute_saved'):.1f}% | "
              f"{wall:.1f} | {len(rs)} |")


def seeds(roots: List[str]) -> None:
    """Per-seed final accuracies of every run under several folders (runs of different lengths)."""
    print("| run | epochs | compute saved | compute speedup vs full | final test acc per seed (%) | mean ± std |")
    print("|---|---|---|---|---|---|")
    full = None
    for root in roots:
        for label, rs in sorted(_runs(root).items()):
            epochs = len(next(iter(rs.values()))["epochs"])
            full = full or epochs
            cost = statistics.mean((len(r["epochs"]) / full) * (1 - r["summary"]["compute_saved"]) for r in rs.values())
            acc = _acc(rs)
            print(f"| {label} | {epochs} | {100 * _saved(rs, 'compute_saved'):.1f}% | {1 / cost:.2f}x | "
                  f"{' / '.join(f'{a:.2f}' for a in acc)} | {_ms(acc)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["control", "tradeoff", "probing", "runs", "seeds"])
    ap.add_argument("root", nargs="+", help="compare folder(s); seeds: the first folder's runs set the full length")
    ap.add_argument("--plot", default="", help="tradeoff: write the plot here")
    a = ap.parse_args()
    if a.what == "seeds":
        return seeds(a.root)
    root = a.root[0]
    if a.what == "control":
        control(root)
    elif a.what == "tradeoff":
        tradeoff(root, a.plot)
    elif a.what == "probing":
        probing(root)
    else:
        plain(root)


if __name__ == "__main__":
    main()
