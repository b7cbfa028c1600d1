"""``ies tradeoff``: accuracy against computation saved, method by method (the paper's Figure 5).

Sweeps each method's knob (IES threshold, Random Remove fraction, InfoBatch prune ratio)
over seeds and plots final test accuracy against total backprop saved, one line per
method. Runs train through :func:`~ies.experiments.grid.run_grid` (one folder each under
``OUT/runs``); :func:`write_tradeoff` rebuilds ``summary.md``, ``tradeoff.json`` and
``tradeoff.png`` from those folders alone. ``ies budget`` is in :mod:`ies.experiments.budget`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .plots import plot_tradeoff
from .report import TIMING_NOTE, aggregate, check_complete, config_line, load_run
from .runs import run_label
from .tables import table, write_json

__all__ = ["KNOBS", "TRADEOFF_METHODS", "tradeoff_specs", "tradeoff_table", "write_tradeoff", "fmt"]

# method -> its trade-off knob
KNOBS: Dict[str, str] = {"ies": "threshold", "random": "fraction", "infobatch": "prune_ratio"}
TRADEOFF_METHODS = ("ies", "random", "infobatch", "none")


def fmt(v: float) -> str:
    return f"{v:.3g}"


def tradeoff_specs(methods: Sequence[str], orders: Sequence[int], base_threshold: float, scale: Sequence[float],
                   fractions: Sequence[float], ies_params: Optional[Dict[str, Any]] = None
                   ) -> List[Tuple[str, Dict[str, Any]]]:
    """The (method, params) grid of a trade-off sweep."""
    specs: List[Tuple[str, Dict[str, Any]]] = []
    if "none" in methods:
        specs.append(("none", {}))
    if "ies" in methods:
        for k in orders:
            for s in scale:
                specs.append(("ies", {**(ies_params or {}), "order": k, "threshold": float(fmt(base_threshold * s))}))
    if "random" in methods:
        specs += [("random", {"fraction": f}) for f in fractions]
    if "infobatch" in methods:
        specs += [("infobatch", {"prune_ratio": f}) for f in fractions]
    return specs


def _family(method: str, params: Dict[str, Any]) -> str:
    if method == "ies":
        return f"IES (order {params.get('order', 2)})"
    return {"random": "Random Remove", "infobatch": "Small-Loss & Rescale (InfoBatch)", "none": "none (baseline)"}.get(
        method, method)


def tradeoff_table(points: List[Dict[str, Any]]) -> str:
    """The Markdown table of a trade-off: one row per (method, knob value)."""
    head = ["method", "knob", "final test acc (%)", "backprop saved", "compute saved", "train wall (s)",
            "wall speedup", "seeds"]
    body = []
    for p in points:
        knob = KNOBS.get(p["method"])
        kv = f"{knob}={p['params'][knob]}" if knob and knob in p["params"] else "-"
        body.append([p["family"], kv, f"{p['acc_mean']:.2f} ± {p['acc_std']:.2f}", f"{100 * p['backprop_saved']:.1f}%",
                     f"{100 * p['compute_saved']:.1f}%", f"{p['wall_seconds']:.1f}",
                     "-" if p["speedup"] is None else f"{p['speedup']:.2f}x", str(p["seeds"])])
    return table(head, body)


def _points(runs: List[Dict[str, Any]], baseline: str) -> List[Dict[str, Any]]:
    configs = {}
    for r in runs:
        configs.setdefault(r["label"], r["config"])
    points = []
    for row in aggregate(runs, baseline=baseline):
        params = configs[row["label"]].get("method_params") or {}
        points.append({
            "label": row["label"], "method": row["method"], "family": _family(row["method"], params), "params": params,
            "acc_mean": row["final_test_acc_mean"], "acc_std": row["final_test_acc_std"],
            "backprop_saved": row["backprop_saved"], "compute_saved": row["compute_saved"],
            "wall_seconds": row["wall_seconds"], "speedup": row["speedup"], "seeds": len(row["seeds"]),
            "saving_note": row["saving_note"],
        })
    rank = {m: i for i, m in enumerate(("none", "ies", "random", "infobatch"))}
    points.sort(key=lambda p: (rank.get(p["method"], 9), p["params"].get("order", 0),
                               p["params"].get(KNOBS.get(p["method"], ""), 0)))
    return points


def write_tradeoff(run_dirs: Sequence[Path], out: Path, *, command: Optional[str] = None,
                   title: str = "Accuracy vs. backprop saved") -> Dict[str, Any]:
    """Aggregate saved runs into ``summary.md``, ``tradeoff.json`` and ``tradeoff.png``."""
    runs = [load_run(d) for d in run_dirs]
    check_complete(runs)
    labels = [r["label"] or run_label(r["config"]) for r in runs]
    baseline = "none" if "none" in labels else labels[0]  # aggregate's own fallback, named here
    points = _points(runs, baseline)
    out.mkdir(parents=True, exist_ok=True)
    cfg0, env = runs[0]["config"], runs[0]["environment"]
    n_seeds = max(p["seeds"] for p in points)
    plot = plot_tradeoff(points, out / "tradeoff.png",
                         f"{title}\n{cfg0['dataset']}, {cfg0['model']}, {cfg0['epochs']} epochs, "
                         f"mean ± std of {n_seeds} seed{'s' * (n_seeds > 1)}")
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [config_line(cfg0, env) + f" {cfg0['epochs']} epochs.", "",
              f"![trade-off]({plot.name})", "", tradeoff_table(points), "",
              "Final-epoch test accuracy, mean ± std over seeds. Backprop saved = 1 - samples backpropagated / "
              "(N x epochs); compute saved also counts forward-only passes at 1/3 of a forward+backward. "
              f"Wall speedup is against `{baseline}`"
              + ("" if baseline == "none" else " (no `none` run was in this sweep)") + ". " + TIMING_NOTE, ""]
    notes = {p["method"]: p["saving_note"] for p in points if p["saving_note"]}
    lines += ["How each method's saving is counted:", ""] + [f"- `{k}`: {v}" for k, v in notes.items()] + [""]
    (out / "summary.md").write_text("\n".join(lines))
    payload = {"points": points, "runs": [r["dir"] for r in runs], "command": command, "plot": str(plot)}
    write_json(out / "tradeoff.json", payload)
    return payload
