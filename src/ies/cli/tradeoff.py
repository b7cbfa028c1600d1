"""``ies tradeoff``: accuracy vs. backprop saved over each method's knob (the paper's Figure 5)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any, Dict

from .common import (CLIError, add_run_args, log, name_list, number_list, positive_int, prepare_out,
                     progress_factory, resolve_config, user_errors)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
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
    t.add_argument("--probe-every", "--score-every", dest="probe_every", type=positive_int, default=None,
                   help="IES: probe excluded samples every R epochs (default: the method's, 1)")
    t.add_argument("--seeds", type=positive_int, default=3, help="number of seeds, 0..N-1 (default 3)")
    add_run_args(t)


def run(args: argparse.Namespace) -> int:
    from ..experiments.engine import check_run
    from ..experiments.grid import GridRun, check_grid, run_grid
    from ..experiments.runs import run_label
    from ..experiments.tradeoff import TRADEOFF_METHODS, tradeoff_specs, tradeoff_table, write_tradeoff

    methods = name_list(args.methods, TRADEOFF_METHODS, "--methods")
    if not args.base_threshold > 0:
        raise CLIError(f"--base-threshold must be > 0, got {args.base_threshold}")
    ies_extra: Dict[str, Any] = {} if args.probe_every is None else {"probe_every": args.probe_every}
    specs = tradeoff_specs(methods, number_list(args.orders, "--orders", int), args.base_threshold,
                           number_list(args.scale, "--scale"), number_list(args.fractions, "--fractions"), ies_extra)
    base = resolve_config(args, method="none")
    with user_errors():
        configs = [replace(base, method=name, method_params=dict(params)).resolved() for name, params in specs]
        data = check_run(configs[0])
        for cfg in configs[1:]:
            check_run(cfg, data)  # bad knob values fail before any training
    runs = [GridRun(run_label(c.to_dict()), replace(c, seed=s)) for s in range(args.seeds) for c in configs]
    out = args.out_dir = prepare_out(args, "tradeoff")
    with user_errors():
        check_grid(runs, out, resume=args.resume is not None)
    log(args, f"ies tradeoff: {len(configs)} configurations x {args.seeds} seed(s) = {len(runs)} runs -> {out}")
    t0 = time.perf_counter()
    dirs = run_grid(runs, out, data=data, resume=args.resume is not None, progress=progress_factory(args),
                    log=lambda m: log(args, m), extra={"command": args.command_line},
                    allow_nonfinite=args.allow_nonfinite)
    payload = write_tradeoff(dirs, out, command=args.command_line)
    log(args, "\n" + tradeoff_table(payload["points"]) + f"\n\nreport: {out / 'summary.md'} "
              f"({time.perf_counter() - t0:.0f}s in all)")
    return 0
