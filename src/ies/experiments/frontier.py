"""``ies frontier``: every method against plain training of every length (issue 18).

The *frontier* is plain training (method ``none``) run for ``E``, ``2E/3``, ``E/2``, ``E/3`` and
``E/4`` epochs with the learning-rate schedule compressed to each length, once per schedule:
cosine (the dataset's ``adam-cos`` / ``sgd``) and linear decay to zero per step (``adam-lin0`` /
``sgd-lin0``, Li et al. 2020, "Budgeted Training"). A method (IES in target mode at savings that
match the shorter lengths' compute, IES δ-mode, InfoBatch, Random Remove) runs for the full ``E``
epochs on the base schedule. Each run is a point (x, accuracy) with x its *measured* training
wall time (training loop + probe pass) or its compute in epoch-equivalents,
``planned epochs x (1 - compute_saved)`` (a forward-only pass counts 1/3, as everywhere here).

A method's *gap* at equal time (or compute) is its accuracy minus the plain curve's, linearly
interpolated at the method's x, seed by seed (the frontier of seed s is made of seed s's plain
runs); outside the plain curve's x range the gap is ``None`` ("outside"). :func:`write_frontier`
rebuilds ``frontier.md``, ``frontier.json`` and ``frontier.png`` from the run folders alone.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import RunConfig
from .grid import GridRun, Progress, no_progress, run_grid
from .report import TIMING_NOTE, check_complete, config_line, load_run
from .runs import run_label
from .tables import table, write_json

__all__ = ["SCHEDULES", "DEFAULT_FRACTIONS", "schedule_optimizer", "plain_epochs", "method_specs", "plan_frontier",
           "frontier_label", "interpolate", "frontier_gap", "frontier_points", "frontier_gaps", "write_frontier",
           "plot_frontier", "run_frontier"]

SCHEDULES = ("cos", "lin0")
DEFAULT_FRACTIONS = (1.0, 2 / 3, 1 / 2, 1 / 3, 1 / 4)
# optimizer family -> schedule -> optimizer name
_SCHEDULE_OPT = {"adam": {"cos": "adam-cos", "lin0": "adam-lin0"}, "sgd": {"cos": "sgd", "lin0": "sgd-lin0"}}
_FAMILY_OF = {opt: fam for fam, d in _SCHEDULE_OPT.items() for opt in d.values()}
AXES = (("wall", "time"), ("compute", "compute"))  # (point key, name in the report)


def schedule_optimizer(optimizer: str, schedule: str) -> str:
    """The optimizer of ``optimizer``'s family with ``schedule``: ``("adam-cos", "lin0") -> "adam-lin0"``."""
    fam = _FAMILY_OF.get(optimizer)
    if fam is None:
        raise ValueError(f"ies frontier compresses cosine and linear-to-zero schedules; optimizer {optimizer!r} has "
                         f"neither: use --optimizer {' or '.join(sorted(_FAMILY_OF))}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    return _SCHEDULE_OPT[fam][schedule]


def plain_epochs(epochs: int, fractions: Sequence[float]) -> List[int]:
    """The plain runs' lengths, longest first: ``round(epochs x f)`` (at least 1), each once."""
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions of the epochs must be in (0, 1], got {list(fractions)}; e.g. 1,0.5,0.25")
    return sorted({max(1, int(round(epochs * f))) for f in fractions}, reverse=True)


def method_specs(savings: Sequence[float], extra: Sequence[Tuple[str, Dict[str, Any]]] = (), *, random: bool = True
                 ) -> List[Tuple[str, Dict[str, Any]]]:
    """IES target mode (compute target) and (``random``) Random Remove at each saving, then ``extra`` specs."""
    if any(not 0 < s < 1 for s in savings):
        raise ValueError(f"savings must be in (0, 1), got {list(savings)}; e.g. 0.333,0.5,0.667")
    specs: List[Tuple[str, Dict[str, Any]]] = []
    for s in savings:
        specs.append(("ies", {"target_saving": s, "target_measure": "compute"}))
    specs += [("random", {"fraction": s}) for s in savings] if random else []
    return specs + [s for s in extra if s not in specs]


def _schedule(optimizer: str) -> str:
    """``"adam-lin0" -> "lin0"``; an optimizer outside the two families is its own schedule."""
    return next((s for s, o in _SCHEDULE_OPT.get(_FAMILY_OF.get(optimizer, ""), {}).items() if o == optimizer),
                optimizer)


def frontier_label(config: Dict[str, Any]) -> str:
    """A run's row: ``none [cos, 40 ep]`` for a plain run, the method's label otherwise."""
    if config["method"] == "none":
        return f"none [{_schedule(config['optimizer'])}, {config['epochs']} ep]"
    return run_label(config)


def plan_frontier(base: RunConfig, *, fractions: Sequence[float], schedules: Sequence[str],
                  specs: Sequence[Tuple[str, Dict[str, Any]]], seeds: Sequence[int]) -> List[GridRun]:
    """Every run, seed by seed; within a seed plain runs and method runs alternate."""
    base = base.resolved()
    plain = [replace(base, method="none", method_params={}, epochs=e, optimizer=schedule_optimizer(base.optimizer, s))
             for s in schedules for e in plain_epochs(base.epochs, fractions)]
    methods = [replace(base, method=m, method_params=dict(p)) for m, p in specs]
    order: List[RunConfig] = []
    for i in range(max(len(plain), len(methods))):
        order += plain[i:i + 1] + methods[i:i + 1]
    runs = []
    for seed in seeds:
        for c in order:
            cfg = replace(c, seed=seed).resolved()
            runs.append(GridRun(frontier_label(cfg.to_dict()), cfg))
    return runs


def interpolate(points: Sequence[Tuple[float, float]], x: float) -> Optional[float]:
    """``y`` at ``x`` on the polyline through ``points`` (sorted by x); None outside their x range."""
    pts = sorted(points)
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1]  # a single point, hit exactly


def frontier_gap(points: Sequence[Tuple[float, float]], x: float, y: float) -> Optional[float]:
    """``y`` minus the frontier at ``x`` (positive: above it); None outside the frontier's range."""
    f = interpolate(points, x)
    return None if f is None else y - f


def frontier_points(runs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One point per run folder: label, kind, schedule, seed, accuracy, wall time, compute."""
    pts = []
    for r in runs:
        c, s = r["config"], r["summary"]
        plain = c["method"] == "none"
        pts.append({
            "label": frontier_label(c), "method": c["method"], "kind": "plain" if plain else "method",
            "schedule": _schedule(c["optimizer"]) if plain else None,
            "seed": c["seed"], "epochs": c["epochs"], "acc": float(s["final_test_acc"]),
            "wall": float(s["wall_seconds"]), "compute": c["epochs"] * (1.0 - float(s.get("compute_saved", 0.0))),
            "compute_saved": float(s.get("compute_saved", 0.0)), "backprop_saved": float(s.get("backprop_saved", 0.0)),
        })
    return pts


def _mean_std(xs: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def frontier_gaps(points: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per label: accuracy, wall, compute (means), and the gap to each schedule's frontier per seed and mean ± std."""
    schedules = sorted({p["schedule"] for p in points if p["kind"] == "plain"})
    front = {(s, seed, ax): [(p[ax], p["acc"]) for p in points if p["schedule"] == s and p["seed"] == seed]
             for s in schedules for seed in {p["seed"] for p in points} for ax, _ in AXES}
    rows: Dict[str, Dict[str, Any]] = {}
    for p in points:
        rows.setdefault(p["label"], {"label": p["label"], "kind": p["kind"], "method": p["method"],
                                     "schedule": p["schedule"], "epochs": p["epochs"], "points": []})["points"].append(p)
    out = []
    for row in rows.values():
        ps = sorted(row["points"], key=lambda p: p["seed"])
        row["seeds"] = [p["seed"] for p in ps]
        for key in ("acc", "wall", "compute", "compute_saved", "backprop_saved"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([p[key] for p in ps])
        row["gaps"] = {}
        for s in schedules:
            for ax, name in AXES:
                if row["schedule"] == s:
                    continue  # a plain run is its own frontier
                per = [frontier_gap(front[(s, p["seed"], ax)], p[ax], p["acc"]) for p in ps]
                m, sd = _mean_std([g for g in per if g is not None])
                row["gaps"][f"{name} vs {s}"] = {"per_seed": per, "mean": m, "std": sd,
                                                 "outside": sum(g is None for g in per)}
        row.pop("points")
        out.append(row)
    return sorted(out, key=lambda r: (r["kind"] != "plain", r["schedule"] or "", -r["epochs"], r["label"]))


def _gap_text(g: Optional[Dict[str, Any]]) -> str:
    if g is None:
        return "frontier"
    if g["mean"] is None:
        return "outside"
    seeds = " / ".join("outside" if v is None else f"{v:+.2f}" for v in g["per_seed"])
    return f"{g['mean']:+.2f} ± {g['std']:.2f} ({seeds})"


def frontier_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The Markdown table: one row per label, gap columns per (axis, schedule)."""
    cols = sorted({k for r in rows for k in r["gaps"]}, key=lambda k: (k.split(" vs ")[1], not k.startswith("time")))
    head = ["run", "epochs", "final test acc (%)", "compute (epoch-eq.)", "train wall (s)"] + [
        f"gap at equal {k} (points; per seed)" for k in cols]
    body = [[r["label"], str(r["epochs"]), f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}", f"{r['compute_mean']:.1f}",
             f"{r['wall_mean']:.1f}"] + [_gap_text(r["gaps"].get(k)) for k in cols] for r in rows]
    return table(head, body)


def _is_delta(label: str, method: str) -> bool:
    """IES without a target: the δ-rule (``ies`` or ``ies(max_excluded_fraction=0.8)``)."""
    return method == "ies" and "target_saving" not in label


def _short(label: str, method: str) -> str:
    """A plot label: ``IES(0.5)`` for ``ies(target_measure=compute, target_saving=0.5)``, ``IES δ-mode, cap 0.8``
    for ``ies(max_excluded_fraction=0.8)``."""
    if _is_delta(label, method):
        return "IES δ-mode" + label[len("ies"):].replace("(max_excluded_fraction=", ", cap ").replace(")", "")
    short = label.replace("target_measure=compute, ", "").replace("target_saving=", "").replace("fraction=", "")
    return short.replace("ies(", "IES(").replace("random(", "Random(").replace("infobatch", "InfoBatch")


def plot_frontier(rows: Sequence[Dict[str, Any]], path: Path, title: str) -> Path:
    """Two panels, accuracy against wall time and against compute: plain runs as lines, methods as points."""
    from .plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.4), dpi=110)
    colors = {"ies": "tab:blue", "random": "tab:gray", "infobatch": "tab:orange"}
    for ax, (key, name) in zip(axes, AXES):
        for s, style in zip(sorted({r["schedule"] for r in rows if r["kind"] == "plain"}), ("-", "--", ":")):
            ps = sorted((r for r in rows if r["schedule"] == s), key=lambda r: r[f"{key}_mean"])
            ax.errorbar([r[f"{key}_mean"] for r in ps], [r["acc_mean"] for r in ps], yerr=[r["acc_std"] for r in ps],
                        color="black", ls=style, marker="*", capsize=2, label=f"plain, {s} schedule (frontier)")
        for r in (r for r in rows if r["kind"] == "method"):
            delta = _is_delta(r["label"], r["method"])
            ax.errorbar([r[f"{key}_mean"]], [r["acc_mean"]], yerr=[r["acc_std"]], ls="none", capsize=3, ms=7,
                        marker="D" if delta else "o" if r["method"] == "ies" else "s", alpha=0.85,
                        color="tab:purple" if delta else colors.get(r["method"]), label=_short(r["label"], r["method"]))
            ax.annotate(_short(r["label"], r["method"]), (r[f"{key}_mean"], r["acc_mean"]), fontsize=6,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel("training wall time (s, measured)" if key == "wall" else "compute (epoch-equivalents of backprop)")
        ax.set_ylabel("final test accuracy (%, mean ± std over seeds)")
        ax.set_title(f"accuracy vs {name}", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def write_frontier(run_dirs: Sequence[Path], out: Path, *, command: Optional[str] = None) -> Dict[str, Any]:
    """``frontier.md``, ``frontier.json`` and ``frontier.png`` from the run folders alone."""
    runs = [load_run(d) for d in run_dirs]
    for r in runs:
        r["label"] = frontier_label(r["config"])  # the seed counts are checked per frontier row
    check_complete(runs)
    rows = frontier_gaps(frontier_points(runs))
    cfg0, env = runs[0]["config"], runs[0]["environment"]
    base_e = max(r["epochs"] for r in rows)
    title = f"{cfg0['dataset']} (train size {cfg0.get('train_size') or 'default'}), E = {base_e} epochs"
    plot_frontier(rows, out / "frontier.png", title)
    tbl = frontier_table(rows)
    md = [f"# Frontier: methods against plain training of every length ({title})", ""]
    if command:
        md += ["Command:", "", "```", command, "```", ""]
    md += [config_line(cfg0, env) + f" {len({r['config']['seed'] for r in runs})} seed(s).", "", tbl, "",
           "Gap = the run's final test accuracy minus the plain frontier's at the same measured training wall time "
           "(or the same compute), linearly interpolated between the plain runs of the same seed; 'outside' = the "
           "run's time or compute is outside the plain runs' range. Mean ± std over the seeds inside. Compute = "
           "planned epochs x (1 - compute saved), a forward-only pass counted 1/3. " + TIMING_NOTE, "",
           "![frontier](frontier.png)", ""]
    (out / "frontier.md").write_text("\n".join(md))
    payload = {"rows": rows, "runs": [r["dir"] for r in runs], "command": command, "table": tbl}
    write_json(out / "frontier.json", payload)
    return payload


def run_frontier(base: RunConfig, out: Path, *, fractions: Sequence[float], schedules: Sequence[str],
                 specs: Sequence[Tuple[str, Dict[str, Any]]], seeds: Sequence[int], data: Any = None,
                 resume: bool = False, progress: Progress = no_progress, log: Callable[[str], None] = lambda m: None,
                 command: Optional[str] = None) -> Dict[str, Any]:
    """Plan, train (resumable, alternating) and report."""
    runs = plan_frontier(base, fractions=fractions, schedules=schedules, specs=specs, seeds=seeds)
    log(f"ies frontier: {len(runs) // max(len(seeds), 1)} configurations x {len(seeds)} seed(s) -> {out}")
    dirs = run_grid(runs, out, data=data, resume=resume, progress=progress, log=log, extra={"command": command})
    return write_frontier(dirs, out, command=command)
