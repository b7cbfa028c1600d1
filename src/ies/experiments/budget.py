"""``ies budget``: methods at equal compute budgets (the paper's Table 4 / Appendix F).

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
only below-mean samples) is reported as such, with the closest value found. IES probes
its excluded samples every ``--probe-every`` epochs (5, the paper's Appendix F setting).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import RunConfig
from .data import TensorData
from .engine import run_training
from .grid import GridRun, Progress, no_progress, run_grid
from .report import TIMING_NOTE, aggregate, check_complete, config_line, load_run
from .runs import run_label
from .tables import table, write_json
from .tradeoff import KNOBS, fmt

__all__ = ["BUDGET_METHODS", "calibrate", "plan_budget", "run_budget", "write_budget", "Calibrator"]

BUDGET_METHODS = ("random", "infobatch", "ies")
Row = Tuple[str, RunConfig, Dict[str, Any]]  # (label, config, what the row stands for)


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


class Calibrator:
    """Measures a knob value's compute saving with one run on the calibration seed.

    Measurements are kept in ``cache`` (a JSON file) so ``--resume`` does not repeat them.
    """

    def __init__(self, base: RunConfig, data: TensorData, ies_fixed: Dict[str, Any], seed: int,
                 cache: Optional[Path] = None, log: Callable[[str], None] = lambda msg: None) -> None:
        self.base, self.data, self.ies_fixed, self.seed, self.cache, self.log = base, data, ies_fixed, seed, cache, log
        self.measured: Dict[str, Dict[str, float]] = {}  # "method@epochs" -> {knob value: saving}
        if cache is not None and cache.exists():
            self.measured = json.loads(cache.read_text())

    def params(self, method: str, value: float) -> Dict[str, Any]:
        return {KNOBS[method]: value, **(self.ies_fixed if method == "ies" else {})}

    def known(self, method: str, epochs: int) -> List[Tuple[float, float]]:
        return [(float(v), s) for v, s in self.measured.get(f"{method}@{epochs}", {}).items()]

    def measure_for(self, method: str, epochs: int) -> Callable[[float], float]:
        cache = self.measured.setdefault(f"{method}@{epochs}", {})

        def measure(value: float) -> float:
            v = _round_knob(method, value)
            if repr(v) not in cache:
                cfg = replace(self.base, method=method, epochs=epochs, seed=self.seed,
                              method_params=self.params(method, v))
                cache[repr(v)] = run_training(cfg, self.data).summary["compute_saved"]
                if self.cache is not None:
                    write_json(self.cache, self.measured)
                self.log(f"  calibrating {method} @ {epochs} ep: {KNOBS[method]}={v} -> "
                         f"compute saved {100 * cache[repr(v)]:.1f}%")
            return cache[repr(v)]
        return measure


def _method_row(cal: Calibrator, m: str, epochs: int, target: float, S: float, kind: str, *, calib_runs: int,
                tolerance: float) -> Tuple[Row, Dict[str, Any]]:
    """One method's row at one budget: its knob set (analytically or by calibration) to ``target``."""
    if m == "random":
        res = {"value": target, "saving": target, "reached": True, "trials": [], "analytic": True}
    else:
        lo, hi, log = (0.0, 0.9, False) if m == "infobatch" else (1e-6, 10.0, True)  # InfoBatch caps its ratio at 0.9
        res = calibrate(cal.measure_for(m, epochs), target, lo, hi, max_runs=calib_runs, tolerance=tolerance,
                        log=log, known=cal.known(m, epochs))
    value = _round_knob(m, res["value"])
    params = cal.params(m, value)
    record = {"method": m, "speedup_target": S, "epochs": epochs, "target_saving": target, "knob": KNOBS[m],
              **res, "value": value}
    if not res["reached"]:
        cal.log(f"  note: {m} @ {epochs} ep could not reach {100 * target:.0f}% compute saved "
                f"(closest: {100 * res['saving']:.1f}% at {KNOBS[m]}={value})")
    row = (f"{run_label({'method': m, 'method_params': params})} [{epochs} ep, {S:g}x]",
           replace(cal.base, method=m, epochs=epochs, method_params=params),
           {"speedup_target": S, "epochs": epochs, "kind": kind, "target_saving": target, "reached": res["reached"]})
    return row, record


def plan_budget(cal: Calibrator, *, methods: Sequence[str], speedups: Sequence[float], halved: bool,
                calib_runs: int, tolerance: float) -> Tuple[List[Row], List[Dict[str, Any]]]:
    """The rows of a budget comparison (reference first) and the calibration record of each knob."""
    T = cal.base.epochs
    rows: List[Row] = [(f"none [{T} ep, reference]", replace(cal.base, method="none", method_params={}),
                        {"speedup_target": 1.0, "epochs": T, "kind": "reference"})]
    calibrations: List[Dict[str, Any]] = []
    for S in speedups:
        e_none = max(1, int(round(T / S)))
        rows.append((f"none [{e_none} ep]", replace(cal.base, method="none", method_params={}, epochs=e_none),
                     {"speedup_target": S, "epochs": e_none, "kind": "fewer epochs"}))
        plans = [(T, 1.0 - 1.0 / S, "selection")]
        if halved and S > 2:
            plans.append((max(1, int(round(T / 2))), 1.0 - 2.0 / S, "halved epochs + selection"))
        for epochs, target, kind in plans:
            for m in methods:
                row, record = _method_row(cal, m, epochs, target, S, kind, calib_runs=calib_runs, tolerance=tolerance)
                rows.append(row)
                calibrations.append(record)
    return rows, calibrations


def _budget_table(info: Dict[str, Dict[str, Any]], agg: Dict[str, Dict[str, Any]], T: int
                  ) -> Tuple[str, List[Dict[str, Any]]]:
    head = ["budget", "method", "epochs", "final test acc (%)", "compute saved in run", "compute speedup vs full",
            "wall speedup vs full", "how"]
    body, rows = [], []
    for label, inf in info.items():
        a = agg[label]
        cost = inf["epochs"] / T * (1.0 - a["compute_saved"])
        cspeed = 1.0 / cost if cost > 0 else float("inf")
        how = inf["kind"] + ("" if inf.get("reached", True) else " (target not reached)")
        budget = "1x (reference)" if inf["kind"] == "reference" else f"{inf['speedup_target']:g}x"
        body.append([budget, label, str(inf["epochs"]), f"{a['final_test_acc_mean']:.2f} ± {a['final_test_acc_std']:.2f}",
                     f"{100 * a['compute_saved']:.1f}%", f"{cspeed:.2f}x",
                     "-" if a["speedup"] is None else f"{a['speedup']:.2f}x", how])
        rows.append({**a, **inf, "compute_speedup": cspeed, "cost_vs_full": cost})
    return table(head, body), rows


def _calibration_lines(calibrations: List[Dict[str, Any]]) -> List[str]:
    lines = []
    for c in calibrations:
        head = f"- {c['method']} @ {c['epochs']} ep, target {100 * c['target_saving']:.0f}%: {c['knob']}={c['value']}"
        if c.get("analytic"):
            lines.append(head + " (analytic: its saving equals the fraction)")
        else:
            tr = ", ".join(f"{fmt(t['value'])}->{100 * t['saving']:.1f}%" for t in c["trials"])
            lines.append(head + f" ({'reached' if c['reached'] else 'NOT reached'}; trials {tr})")
    return lines


def write_budget(run_dirs: Sequence[Path], out: Path, *, T: int, info: Dict[str, Dict[str, Any]],
                 calibrations: List[Dict[str, Any]], ref_label: str, command: Optional[str],
                 speedups: Sequence[float]) -> Dict[str, Any]:
    """``summary.md`` and ``budget.json`` from the saved runs and the calibration record."""
    runs = [load_run(d) for d in run_dirs]
    check_complete(runs)
    agg = {r["label"]: r for r in aggregate(runs, baseline=ref_label)}
    tbl, table_rows = _budget_table(info, agg, T)
    cfg0, env = runs[0]["config"], runs[0]["environment"]
    n_seeds = max(len(a["seeds"]) for a in agg.values())
    md = [f"# Methods at equal compute budgets ({', '.join(f'{s:g}x' for s in speedups)})", ""]
    if command:
        md += ["Command:", "", "```", command, "```", ""]
    md += [config_line(cfg0, env) + f" Full run: {T} epochs. {n_seeds} seed(s).", "", tbl, "",
           "Compute speedup vs full = 1 / ((epochs / full epochs) x (1 - compute saved)), with forward-only passes "
           "counted at 1/3 of a forward+backward; wall speedup is the median over seeds of the full-epoch "
           "reference's training wall time over the row's. " + TIMING_NOTE, "", "Knob calibration (first seed):", ""]
    md += _calibration_lines(calibrations) + [""]
    (out / "summary.md").write_text("\n".join(md))
    payload = {"rows": table_rows, "calibrations": calibrations, "runs": [r["dir"] for r in runs],
               "command": command, "table": tbl}
    write_json(out / "budget.json", payload)
    return payload


def run_budget(base: RunConfig, out: Path, *, data: TensorData, methods: Sequence[str], speedups: Sequence[float],
               halved: bool, ies_fixed: Dict[str, Any], calib_runs: int, tolerance: float, seeds: Sequence[int],
               resume: bool = False, progress: Progress = no_progress, log: Callable[[str], None] = lambda m: None,
               command: Optional[str] = None) -> Dict[str, Any]:
    """Calibrate the knobs on the first seed, train every row for every seed, write the report."""
    cal = Calibrator(base, data, ies_fixed, seeds[0], cache=out / "calibration.json", log=log)
    rows, calibrations = plan_budget(cal, methods=methods, speedups=speedups, halved=halved, calib_runs=calib_runs,
                                     tolerance=tolerance)
    log(f"ies budget: {len(rows)} configurations x {len(seeds)} seed(s) -> {out}")
    grid = [GridRun(label, replace(cfg, seed=s)) for s in seeds for label, cfg, _ in rows]
    dirs = run_grid(grid, out, data=data, resume=resume, progress=progress, log=log, extra={"command": command})
    return write_budget(dirs, out, T=base.epochs, info={lab: inf for lab, _, inf in rows}, calibrations=calibrations,
                        ref_label=rows[0][0], command=command, speedups=speedups)
