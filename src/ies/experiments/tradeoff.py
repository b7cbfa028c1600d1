"""``ies tradeoff`` and ``ies budget``: accuracy against computation saved, method by method.

* ``ies tradeoff`` sweeps each method's knob (IES threshold, Random Remove fraction,
  InfoBatch prune ratio) over seeds and plots final test accuracy against total
  backprop saved, one line per method, as in the IES paper's Figure 5.
* ``ies budget`` compares methods at equal compute budgets, as in the paper's Table 4 /
  Appendix F: every row costs ``1/S`` of the full-epoch no-removal run (S = 2, 3).

Both train through :func:`~ies.experiments.engine.run_training`, write one run folder per
run with :func:`~ies.experiments.report.save_run`, and aggregate over seeds with
:func:`~ies.experiments.report.aggregate`. Per-run folders go under ``OUT/runs``; the
summary (``summary.md``, a JSON file and the plot) is rebuilt from them.

Budget definition (``ies budget``). The reference is ``none`` trained for the full ``T``
epochs; its cost, ``N * T`` forward+backward passes, is the unit. A run's cost is
``(epochs planned / T) * (1 - compute_saved)``, where ``compute_saved`` is the engine's
per-run figure (a forward-only pass counts 1/3, as everywhere in this package); its
*compute speedup* is ``1 / cost``. For each target ``S`` the rows are:

* ``none`` for ``round(T / S)`` epochs: fewer epochs, no selection (exactly ``S`` x);
* each method for ``T`` epochs with its knob set so that ``compute_saved ~ 1 - 1/S``
  (50% for 2x, 67% for 3x): selection alone;
* for ``S > 2`` (unless ``--no-halved``), each method for ``T/2`` epochs with its knob set
  so that ``compute_saved ~ 1 - 2/S`` (a further third for 3x): halved epochs plus
  selection. (For ``S = 2`` halving the epochs alone already gives 2x, so that row would
  be the ``none`` one.)

Knob setting: Random Remove's saving equals its fraction, so it is set analytically.
InfoBatch's prune ratio and the IES threshold are found by a short search on the first
seed (bisection, with linear interpolation once the target is bracketed, on the ratio
and on ``log10(threshold)``), at most ``--calib-runs`` full-length runs each, stopping
within ``--tolerance`` of the target. A target a method cannot reach (InfoBatch prunes
only below-mean samples) is reported as such, with the closest value found. IES scores
its excluded samples every ``--score-every`` epochs (5, the paper's Appendix F setting).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["add_commands", "cmd_tradeoff", "cmd_budget", "tradeoff_specs", "calibrate", "plot_tradeoff",
           "KNOBS", "BUDGET_METHODS"]

# method -> its trade-off knob
KNOBS: Dict[str, str] = {"ies": "threshold", "random": "fraction", "infobatch": "prune_ratio"}
TRADEOFF_METHODS = ("ies", "random", "infobatch", "none")
BUDGET_METHODS = ("random", "infobatch", "ies")
_FAMILY_STYLE = {"random": ("tab:gray", "s"), "infobatch": ("tab:orange", "^"), "none": ("black", "*")}
_ORDER_COLORS = {0: "tab:purple", 1: "tab:green", 2: "tab:blue", 3: "tab:red"}


# ----------------------------------------------------------------------------- parsing helpers
def _numbers(text: str, what: str, kind: type, noun: str) -> list:
    from ..cli import CLIError

    try:
        vals = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated {noun}, got {text!r}") from None
    if not vals:
        raise CLIError(f"{what} is empty")
    return vals


def _floats(text: str, what: str) -> List[float]:
    return _numbers(text, what, float, "numbers")


def _ints(text: str, what: str) -> List[int]:
    return _numbers(text, what, int, "integers")


def _names(text: str, allowed: Sequence[str], what: str) -> List[str]:
    from ..cli import CLIError

    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise CLIError(f"{what}: {', '.join(bad) or '(empty)'} not supported here; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _fmt(v: float) -> str:
    return f"{v:.3g}"


# ----------------------------------------------------------------------------- shared training loop
def _train_grid(args: argparse.Namespace, entries: Sequence[Tuple[str, Any]], seeds: Sequence[int], out: Path,
                data: Any, command: str) -> List[Path]:
    """Train every (label, config) for every seed, alternating within a seed; one run folder each."""
    from ..cli import _log, make_progress
    from .engine import run_training
    from .report import save_run

    dirs: List[Path] = []
    for seed in seeds:
        for label, cfg in entries:
            cfg = replace(cfg, seed=seed)
            res = run_training(cfg, data, on_epoch=make_progress(args, cfg.epochs, f"{label} seed {seed}"))
            safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in label).strip("_")
            d = save_run(res, out / "runs" / f"{safe}-seed{seed}", extra={"label": label, "command": command})
            dirs.append(d)
            s = res.summary
            _log(args, f"  {label} seed {seed}: acc {s['final_test_acc']:.2f}%, backprop saved "
                       f"{100 * s['backprop_saved']:.1f}%, compute saved {100 * s['compute_saved']:.1f}%, "
                       f"wall {s['wall_seconds']:.1f}s")
    return dirs


def _load_data_and_warm_up(cfg: Any) -> Any:
    from .data import load_dataset
    from .engine import run_training

    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_size=cfg.train_size, val_fraction=cfg.val_fraction,
                        data_seed=cfg.data_seed)
    # Untimed warm-up (lazy imports, allocator, thread pools) so the first timed run is not penalized.
    run_training(replace(cfg, epochs=1, method="none", method_params={}), data)
    return data


def _config_line(cfg: Dict[str, Any], env: Dict[str, Any]) -> str:
    return (f"Dataset `{cfg['dataset']}` (train size {cfg.get('train_size') or 'default'}), model `{cfg['model']}`, "
            f"batch {cfg['batch_size']}, optimizer `{cfg['optimizer']}` lr {cfg['lr']}. "
            f"ies {env.get('ies_version')}, torch {env.get('torch_version')}, {env.get('cpu_count')} CPUs, "
            f"{env.get('torch_threads')} torch thread(s) ({env.get('platform')}).")


def _command() -> str:
    return " ".join(map(shlex.quote, ["ies", *sys.argv[1:]]))


# ----------------------------------------------------------------------------- ies tradeoff
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
                specs.append(("ies", {**(ies_params or {}), "order": k, "threshold": float(_fmt(base_threshold * s))}))
    if "random" in methods:
        specs += [("random", {"fraction": f}) for f in fractions]
    if "infobatch" in methods:
        specs += [("infobatch", {"prune_ratio": f}) for f in fractions]
    return specs


def _family(row: Dict[str, Any], params: Dict[str, Any]) -> str:
    if row["method"] == "ies":
        return f"IES (order {params.get('order', 2)})"
    return {"random": "Random Remove", "infobatch": "Small-Loss & Rescale (InfoBatch)", "none": "none (baseline)"}.get(
        row["method"], row["method"])


def plot_tradeoff(points: List[Dict[str, Any]], path: Path, title: str) -> Path:
    """Test accuracy (mean ± std over seeds) against backprop saved, one line per method."""
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=110)
    fams: Dict[str, List[Dict[str, Any]]] = {}
    for p in points:
        fams.setdefault(p["family"], []).append(p)
    for fam, ps in fams.items():
        ps = sorted(ps, key=lambda p: p["backprop_saved"])
        xs = [100 * p["backprop_saved"] for p in ps]
        ys = [p["acc_mean"] for p in ps]
        es = [p["acc_std"] for p in ps]
        method = ps[0]["method"]
        if method == "none":
            ax.axhline(ys[0], color="black", ls="--", lw=1, alpha=0.6)
            ax.errorbar(xs, ys, yerr=es, color="black", marker="*", ms=11, ls="none", label=fam, capsize=3)
            continue
        if method == "ies":
            color, marker = _ORDER_COLORS.get(ps[0]["params"].get("order", 2), None), "o"
        else:
            color, marker = _FAMILY_STYLE.get(method, (None, "o"))
        ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, lw=1.6, capsize=3, label=fam)
    ax.set_xlabel("Total backprop saved (%)")
    ax.set_ylabel("Final test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _trade_table(points: List[Dict[str, Any]]) -> str:
    head = ["method", "knob", "final test acc (%)", "backprop saved", "compute saved", "train wall (s)",
            "wall speedup", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        knob = KNOBS.get(p["method"])
        kv = f"{knob}={p['params'][knob]}" if knob and knob in p["params"] else "-"
        lines.append("| " + " | ".join([
            p["family"], kv, f"{p['acc_mean']:.2f} ± {p['acc_std']:.2f}", f"{100 * p['backprop_saved']:.1f}%",
            f"{100 * p['compute_saved']:.1f}%", f"{p['wall_seconds']:.1f}",
            "-" if p["speedup"] is None else f"{p['speedup']:.2f}x", str(p["seeds"]),
        ]) + " |")
    return "\n".join(lines)


def write_tradeoff(run_dirs: Sequence[Path], out: Path, *, command: Optional[str] = None,
                   title: str = "Accuracy vs. backprop saved") -> Dict[str, Any]:
    """Aggregate saved runs into ``summary.md``, ``tradeoff.json`` and ``tradeoff.png``."""
    from .report import TIMING_NOTE, aggregate, load_run

    runs = [load_run(d) for d in run_dirs]
    labels = {}
    for r in runs:
        labels.setdefault(r["label"], r["config"])
    baseline = "none" if "none" in labels else next(iter(labels))  # aggregate's own fallback, named here
    rows = aggregate(runs, baseline=baseline)
    points = []
    for row in rows:
        cfg = labels[row["label"]]
        params = cfg.get("method_params") or {}
        points.append({
            "label": row["label"], "method": row["method"], "family": _family(row, params), "params": params,
            "acc_mean": row["final_test_acc_mean"], "acc_std": row["final_test_acc_std"],
            "backprop_saved": row["backprop_saved"], "compute_saved": row["compute_saved"],
            "wall_seconds": row["wall_seconds"], "speedup": row["speedup"], "seeds": len(row["seeds"]),
            "saving_note": row["saving_note"],
        })
    rank = {m: i for i, m in enumerate(("none", "ies", "random", "infobatch"))}
    points.sort(key=lambda p: (rank.get(p["method"], 9), p["params"].get("order", 0),
                               p["params"].get(KNOBS.get(p["method"], ""), 0)))
    out.mkdir(parents=True, exist_ok=True)
    cfg0, env = runs[0]["config"], runs[0]["environment"]
    n_seeds = max(p["seeds"] for p in points)
    plot = plot_tradeoff(points, out / "tradeoff.png",
                         f"{title}\n{cfg0['dataset']}, {cfg0['model']}, {cfg0['epochs']} epochs, "
                         f"mean ± std of {n_seeds} seed{'s' * (n_seeds > 1)}")
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [_config_line(cfg0, env) + f" {cfg0['epochs']} epochs.", "",
              f"![trade-off]({plot.name})", "", _trade_table(points), "",
              "Final-epoch test accuracy, mean ± std over seeds. Backprop saved = 1 - samples backpropagated / "
              "(N x epochs); compute saved also counts forward-only passes at 1/3 of a forward+backward. "
              f"Wall speedup is against `{baseline}`"
              + ("" if baseline == "none" else " (no `none` run was in this sweep)") + ". " + TIMING_NOTE, ""]
    notes = {p["method"]: p["saving_note"] for p in points if p["saving_note"]}
    lines += ["How each method's saving is counted:", ""] + [f"- `{k}`: {v}" for k, v in notes.items()] + [""]
    (out / "summary.md").write_text("\n".join(lines))
    payload = {"points": points, "runs": [r["dir"] for r in runs], "command": command, "plot": str(plot)}
    (out / "tradeoff.json").write_text(json.dumps(payload, indent=2, default=str))
    return payload


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from ..cli import CLIError, _log, _out_dir, resolve_config
    from ..policies import build_policy

    methods = _names(args.methods, TRADEOFF_METHODS, "--methods")
    orders = _ints(args.orders, "--orders")
    scale = _floats(args.scale, "--scale")
    fractions = _floats(args.fractions, "--fractions")
    if not args.base_threshold > 0:
        raise CLIError(f"--base-threshold must be > 0, got {args.base_threshold}")
    ies_extra: Dict[str, Any] = {}
    if args.score_every is not None:
        ies_extra["score_every"] = args.score_every
    specs = tradeoff_specs(methods, orders, args.base_threshold, scale, fractions, ies_extra)
    entries = []
    for name, params in specs:
        cfg = resolve_config(args, method=name)
        cfg.method_params = dict(params)
        build_policy(name, 10, total_epochs=cfg.epochs, **params)  # bad values fail before any training
        entries.append((_label(name, params), cfg))
    out = _out_dir(args, "tradeoff")
    command = _command()
    _log(args, f"ies tradeoff: {len(entries)} configurations x {args.seeds} seed(s) = {len(entries) * args.seeds} runs -> {out}")
    t0 = time.perf_counter()
    data = _load_data_and_warm_up(entries[0][1])
    dirs = _train_grid(args, entries, list(range(args.seeds)), out, data, command)
    payload = write_tradeoff(dirs, out, command=command)
    _log(args, "\n" + _trade_table(payload["points"]) + f"\n\nreport: {out / 'summary.md'} "
               f"({time.perf_counter() - t0:.0f}s in all)")
    return 0


def _label(name: str, params: Dict[str, Any]) -> str:
    from .report import run_label

    return run_label({"method": name, "method_params": params})


# ----------------------------------------------------------------------------- ies budget
def calibrate(measure: Callable[[float], float], target: float, lo: float, hi: float, *, max_runs: int,
              tolerance: float, log: bool = False, known: Sequence[Tuple[float, float]] = ()) -> Dict[str, Any]:
    """Find a knob value whose measured saving is within ``tolerance`` of ``target``.

    ``measure(value) -> saving`` is assumed non-decreasing in the knob. Bisection on
    ``[lo, hi]`` (in ``log10`` if ``log``); once measured points bracket the target, the
    next value is the linear interpolation between them (kept inside the middle 80% of
    the bracket so it always shrinks). The search stops early when a larger knob no longer
    saves more (the target is out of reach). ``known`` ``(value, saving)`` pairs measured before
    (e.g. while calibrating another target) narrow the bracket for free. Returns the closest
    value found (known pairs included) and the new trials.
    """
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    finv = (lambda u: 10.0 ** u) if log else (lambda u: u)
    a, b = f(lo), f(hi)
    below: Optional[Tuple[float, float]] = None  # (u, saving) with saving < target, largest u
    above: Optional[Tuple[float, float]] = None  # (u, saving) with saving >= target, smallest u
    trials: List[Dict[str, float]] = []
    seen = [{"value": float(v), "saving": float(sv)} for v, sv in known if lo <= v <= hi]
    for t in seen:
        u = f(t["value"])
        if t["saving"] < target and (below is None or u > below[0]):
            below = (u, t["saving"])
        elif t["saving"] >= target and (above is None or u < above[0]):
            above = (u, t["saving"])
    if below is not None:
        a = below[0]
    if above is not None:
        b = above[0]
    done = any(abs(t["saving"] - target) <= tolerance for t in seen)
    for _ in range(0 if done else max_runs):
        if below is not None and above is not None and above[1] > below[1]:
            w = (target - below[1]) / (above[1] - below[1])
            u = below[0] + min(max(w, 0.1), 0.9) * (above[0] - below[0])
        else:
            u = 0.5 * (a + b)
        value = finv(u)
        saving = float(measure(value))
        trials.append({"value": value, "saving": saving})
        if abs(saving - target) <= tolerance:
            break
        if saving < target and below is not None and u > below[0] and saving <= below[1] + 0.005:
            break  # saturated: a larger knob no longer saves more, the target is out of reach
        if saving < target:
            a, below = u, (u, saving)
        else:
            b, above = u, (u, saving)
    best = min(seen + trials, key=lambda t: abs(t["saving"] - target))
    return {"value": best["value"], "saving": best["saving"], "reached": abs(best["saving"] - target) <= tolerance,
            "trials": trials}


def _round_knob(method: str, value: float) -> float:
    return float(f"{value:.3g}") if method == "ies" else round(value, 4)


def cmd_budget(args: argparse.Namespace) -> int:
    from ..cli import CLIError, _log, _out_dir, resolve_config
    from .engine import run_training

    methods = _names(args.methods, BUDGET_METHODS, "--methods")
    speedups = list(dict.fromkeys(_floats(args.speedups, "--speedups")))
    if any(s <= 1 for s in speedups):
        raise CLIError(f"--speedups must be > 1 (e.g. 2,3), got {args.speedups!r}")
    if not 0 < args.tolerance < 0.5:
        raise CLIError(f"--tolerance must be in (0, 0.5), got {args.tolerance}")
    base = resolve_config(args, method="none")
    T = base.epochs
    out = _out_dir(args, "budget")
    command = _command()
    t0 = time.perf_counter()
    data = _load_data_and_warm_up(base)
    seeds = list(range(args.seeds))
    calib_seed = seeds[0]
    ies_fixed = {"score_every": args.score_every}

    def run_cfg(method: str, params: Dict[str, Any], epochs: int):
        cfg = replace(base, method=method, epochs=epochs)
        cfg.method_params = dict(params)
        return cfg

    measured: Dict[Tuple[str, int], Dict[float, float]] = {}  # (method, epochs) -> {knob value: saving}

    def measure_for(method: str, epochs: int) -> Callable[[float], float]:
        cache = measured.setdefault((method, epochs), {})

        def measure(value: float) -> float:
            v = _round_knob(method, value)
            if v not in cache:
                params = {KNOBS[method]: v, **(ies_fixed if method == "ies" else {})}
                res = run_training(replace(run_cfg(method, params, epochs), seed=calib_seed), data)
                cache[v] = res.summary["compute_saved"]
                _log(args, f"  calibrating {method} @ {epochs} ep: {KNOBS[method]}={v} -> "
                           f"compute saved {100 * cache[v]:.1f}%")
            return cache[v]
        return measure

    # Rows: (label, config, info)
    rows: List[Tuple[str, Any, Dict[str, Any]]] = []
    ref_label = f"none [{T} ep, reference]"
    rows.append((ref_label, run_cfg("none", {}, T), {"speedup_target": 1.0, "epochs": T, "kind": "reference"}))
    calibrations: List[Dict[str, Any]] = []
    for S in speedups:
        e_none = max(1, int(round(T / S)))
        rows.append((f"none [{e_none} ep]", run_cfg("none", {}, e_none),
                     {"speedup_target": S, "epochs": e_none, "kind": "fewer epochs"}))
        plans = [(T, 1.0 - 1.0 / S, "selection")]
        if args.halved and S > 2:
            plans.append((max(1, int(round(T / 2))), 1.0 - 2.0 / S, "halved epochs + selection"))
        for epochs, target, kind in plans:
            for m in methods:
                knob = KNOBS[m]
                if m == "random":
                    cal = {"value": target, "saving": target, "reached": True, "trials": [], "analytic": True}
                else:
                    known = list(measured.get((m, epochs), {}).items())
                    lo, hi, log = (0.0, 0.99, False) if m == "infobatch" else (1e-6, 10.0, True)
                    cal = calibrate(measure_for(m, epochs), target, lo, hi, max_runs=args.calib_runs,
                                    tolerance=args.tolerance, log=log, known=known)
                value = _round_knob(m, cal["value"])
                params = {knob: value, **(ies_fixed if m == "ies" else {})}
                calibrations.append({"method": m, "speedup_target": S, "epochs": epochs, "target_saving": target,
                                     "knob": knob, **cal, "value": value})
                if not cal["reached"]:
                    _log(args, f"  note: {m} @ {epochs} ep could not reach {100 * target:.0f}% compute saved "
                               f"(closest: {100 * cal['saving']:.1f}% at {knob}={value})")
                rows.append((f"{_label(m, params)} [{epochs} ep, {S:g}x]", run_cfg(m, params, epochs),
                             {"speedup_target": S, "epochs": epochs, "kind": kind, "target_saving": target,
                              "reached": cal["reached"]}))
    _log(args, f"ies budget: {len(rows)} configurations x {len(seeds)} seed(s) -> {out}")
    dirs = _train_grid(args, [(lab, cfg) for lab, cfg, _ in rows], seeds, out, data, command)
    payload = write_budget(dirs, out, T=T, info={lab: info for lab, _, info in rows}, calibrations=calibrations,
                           ref_label=ref_label, command=command, speedups=speedups)
    _log(args, "\n" + payload["table"] + f"\n\nreport: {out / 'summary.md'} ({time.perf_counter() - t0:.0f}s in all)")
    return 0


def write_budget(run_dirs: Sequence[Path], out: Path, *, T: int, info: Dict[str, Dict[str, Any]],
                 calibrations: List[Dict[str, Any]], ref_label: str, command: Optional[str],
                 speedups: Sequence[float]) -> Dict[str, Any]:
    from .report import TIMING_NOTE, aggregate, load_run

    runs = [load_run(d) for d in run_dirs]
    agg = {r["label"]: r for r in aggregate(runs, baseline=ref_label)}
    head = ["budget", "method", "epochs", "final test acc (%)", "compute saved in run", "compute speedup vs full",
            "wall speedup vs full", "how"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table_rows = []
    for label, inf in info.items():
        a = agg[label]
        cost = inf["epochs"] / T * (1.0 - a["compute_saved"])
        cspeed = 1.0 / cost if cost > 0 else float("inf")
        how = inf["kind"] + ("" if inf.get("reached", True) else " (target not reached)")
        budget = "1x (reference)" if inf["kind"] == "reference" else f"{inf['speedup_target']:g}x"
        lines.append("| " + " | ".join([
            budget, label, str(inf["epochs"]), f"{a['final_test_acc_mean']:.2f} ± {a['final_test_acc_std']:.2f}",
            f"{100 * a['compute_saved']:.1f}%", f"{cspeed:.2f}x",
            "-" if a["speedup"] is None else f"{a['speedup']:.2f}x", how,
        ]) + " |")
        table_rows.append({**a, **inf, "compute_speedup": cspeed, "cost_vs_full": cost})
    table = "\n".join(lines)
    cfg0, env = runs[0]["config"], runs[0]["environment"]
    n_seeds = max(len(a["seeds"]) for a in agg.values())
    md = [f"# Methods at equal compute budgets ({', '.join(f'{s:g}x' for s in speedups)})", ""]
    if command:
        md += ["Command:", "", "```", command, "```", ""]
    md += [_config_line(cfg0, env) + f" Full run: {T} epochs. {n_seeds} seed(s).", "", table, "",
           "Compute speedup vs full = 1 / ((epochs / full epochs) x (1 - compute saved)), with forward-only passes "
           "counted at 1/3 of a forward+backward; wall speedup is the median over seeds of the full-epoch "
           "reference's training wall time over the row's. " + TIMING_NOTE, "", "Knob calibration (first seed):", ""]
    for c in calibrations:
        if c.get("analytic"):
            md.append(f"- {c['method']} @ {c['epochs']} ep, target {100 * c['target_saving']:.0f}%: "
                      f"{c['knob']}={c['value']} (analytic: its saving equals the fraction)")
        else:
            tr = ", ".join(f"{_fmt(t['value'])}->{100 * t['saving']:.1f}%" for t in c["trials"])
            md.append(f"- {c['method']} @ {c['epochs']} ep, target {100 * c['target_saving']:.0f}%: "
                      f"{c['knob']}={c['value']} ({'reached' if c['reached'] else 'NOT reached'}; trials {tr})")
    md.append("")
    (out / "summary.md").write_text("\n".join(md))
    payload = {"rows": table_rows, "calibrations": calibrations, "runs": [r["dir"] for r in runs],
               "command": command, "table": table}
    (out / "budget.json").write_text(json.dumps(payload, indent=2, default=str))
    return payload


# ----------------------------------------------------------------------------- registration
def add_commands(sub: Any) -> None:
    """Add ``tradeoff`` and ``budget`` to the ``ies`` command's subparsers."""
    from ..cli import _add_run_args, _positive_int

    t = sub.add_parser("tradeoff", help="accuracy vs. backprop saved over each method's knob (paper Figure 5)",
                       description="Sweep the IES threshold (base x scale, per order), Random Remove and "
                                   "Small-Loss & Rescale (InfoBatch) fractions, plus the none baseline, over "
                                   "seeds; plot test accuracy against total backprop saved.")
    t.add_argument("--methods", default="ies,random,infobatch,none",
                   help="subset of ies,random,infobatch,none (default: all four)")
    t.add_argument("--orders", default="2", help="IES difference orders to sweep, e.g. 0,1,2,3 (default 2)")
    t.add_argument("--base-threshold", type=float, default=1e-3, help="IES base threshold delta (default 1e-3)")
    t.add_argument("--scale", default="0.01,0.1,1,10,100",
                   help="multipliers of the base threshold (default 0.01,0.1,1,10,100)")
    t.add_argument("--fractions", default="0.1,0.2,0.3,0.4,0.5",
                   help="Random Remove fraction / InfoBatch prune ratio values (default 0.1,...,0.5)")
    t.add_argument("--score-every", type=_positive_int, default=None,
                   help="IES: score excluded samples every R epochs (default: the method's, 1)")
    t.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds, 0..N-1 (default 3)")
    _add_run_args(t)
    t.set_defaults(func=cmd_tradeoff)

    b = sub.add_parser("budget", help="methods at equal compute budgets, e.g. 2x and 3x (paper Table 4)",
                       description="Compare fewer epochs with each method's selection at equal compute: every "
                                   "row costs 1/S of the full-epoch none run (see docs/benchmarks/budget.md).")
    b.add_argument("--methods", default="random,infobatch,ies", help="subset of random,infobatch,ies (default: all)")
    b.add_argument("--speedups", default="2,3", help="target compute speedups S > 1 (default 2,3)")
    b.add_argument("--halved", action=argparse.BooleanOptionalAction, default=True,
                   help="for S > 2 also run halved epochs + selection (default: on)")
    b.add_argument("--score-every", type=_positive_int, default=5,
                   help="IES: score excluded samples every R epochs (default 5, the paper's Appendix F)")
    b.add_argument("--calib-runs", type=_positive_int, default=6,
                   help="most calibration runs per searched knob and target (default 6)")
    b.add_argument("--tolerance", type=float, default=0.03,
                   help="calibration stops within this of the target saving (default 0.03)")
    b.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds, 0..N-1 (default 3)")
    _add_run_args(b)
    b.set_defaults(func=cmd_budget)
