"""``ies budget``: methods at equal compute budgets, e.g. 2x and 3x (the paper's Table 4)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from .common import (CLIError, add_run_args, log, name_list, number_list, positive_int, prepare_out,
                     progress_factory, resolve_config, user_errors)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    b = sub.add_parser("budget", help="methods at equal compute budgets, e.g. 2x and 3x (paper Table 4)",
                       description="Compare fewer epochs with each method's selection at equal compute: every "
                                   "row costs 1/S of the full-epoch none run (see docs/benchmarks/budget.md).")
    b.add_argument("--methods", default="random,infobatch,ies", help="subset of random,infobatch,ies (default: all)")
    b.add_argument("--speedups", default="2,3", help="target compute speedups S > 1 (default 2,3)")
    b.add_argument("--halved", action=argparse.BooleanOptionalAction, default=True,
                   help="for S > 2 also run halved epochs + selection (default: on)")
    b.add_argument("--probe-every", "--score-every", dest="probe_every", type=positive_int, default=5,
                   help="IES: probe excluded samples every R epochs (default 5, the paper's Appendix F)")
    b.add_argument("--calib-runs", type=positive_int, default=6,
                   help="most calibration runs per searched knob and target (default 6)")
    b.add_argument("--tolerance", type=float, default=0.03,
                   help="calibration stops within this of the target saving (default 0.03)")
    b.add_argument("--seeds", type=positive_int, default=3, help="number of seeds, 0..N-1 (default 3)")
    add_run_args(b)


def run(args: argparse.Namespace) -> int:
    from ..experiments.budget import BUDGET_METHODS, run_budget
    from ..experiments.engine import check_run

    methods = name_list(args.methods, BUDGET_METHODS, "--methods")
    speedups = list(dict.fromkeys(number_list(args.speedups, "--speedups")))
    if any(s <= 1 for s in speedups):
        raise CLIError(f"--speedups must be > 1 (e.g. 2,3), got {args.speedups!r}")
    if not 0 < args.tolerance < 0.5:
        raise CLIError(f"--tolerance must be in (0, 0.5), got {args.tolerance}")
    base = resolve_config(args, method="none")
    ies_fixed = {"probe_every": args.probe_every}
    with user_errors():
        data = check_run(base)
        check_run(replace(base, method="ies", method_params=ies_fixed), data)
    out = args.out_dir = prepare_out(args, "budget")
    t0 = time.perf_counter()
    payload = run_budget(base, out, data=data, methods=methods, speedups=speedups, halved=args.halved,
                         ies_fixed=ies_fixed, calib_runs=args.calib_runs, tolerance=args.tolerance,
                         seeds=list(range(args.seeds)), resume=args.resume is not None,
                         progress=progress_factory(args), log=lambda m: log(args, m), command=args.command_line)
    log(args, "\n" + payload["table"] + f"\n\nreport: {out / 'summary.md'} ({time.perf_counter() - t0:.0f}s in all)")
    return 0
