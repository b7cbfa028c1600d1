"""``ies frontier``: each method against plain training of every length, at equal time and compute."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .common import (add_run_args, log, name_list, number_list, parse_method_specs, positive_int,
                     prepare_out, progress_factory, resolve_config, user_errors)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    f = sub.add_parser("frontier", help="methods against plain training of every length (the frontier)",
                       description="Plain training at several lengths with the schedule compressed to each "
                                   "(cosine and linear decay to zero) is the frontier; IES (target and δ-mode), "
                                   "InfoBatch and Random Remove run the full epochs. Reports accuracy against "
                                   "measured wall time and compute, and each method's gap to the frontier.")
    f.add_argument("--fractions", default="1,0.667,0.5,0.333,0.25",
                   help="plain run lengths as fractions of --epochs (default 1,0.667,0.5,0.333,0.25)")
    f.add_argument("--schedules", default="cos,lin0", help="frontier schedules: cos, lin0 or both (default both)")
    f.add_argument("--savings", default="0.333,0.5,0.667",
                   help="compute savings for IES target mode and Random Remove ('' for none; default "
                        "0.333,0.5,0.667: 1.5x, 2x, 3x)")
    f.add_argument("--random", action=argparse.BooleanOptionalAction, default=True,
                   help="Random Remove at each of --savings (default: on)")
    f.add_argument("--methods", default="ies,infobatch",
                   help="further method specs at full length ('' for none; default ies,infobatch: δ-mode and "
                        "InfoBatch at their defaults)")
    f.add_argument("--seeds", type=positive_int, default=3, help="number of seeds, 0..N-1 (default 3)")
    add_run_args(f)


def run(args: argparse.Namespace) -> int:
    from ..experiments.engine import check_run
    from ..experiments.grid import check_grid
    from ..experiments.frontier import SCHEDULES, method_specs, plan_frontier, run_frontier

    fractions = number_list(args.fractions, "--fractions")
    schedules = name_list(args.schedules, SCHEDULES, "--schedules")
    savings = number_list(args.savings, "--savings") if args.savings.strip() else []
    extra = parse_method_specs(args.methods) if args.methods.strip() else []
    base = resolve_config(args, method="none")
    seeds = list(range(args.seeds))
    with user_errors():
        specs = method_specs(savings, extra, random=args.random)
        grid = plan_frontier(base, fractions=fractions, schedules=schedules, specs=specs, seeds=seeds)
        data = check_run(grid[0].config)
        for r in grid[1:len(grid) // len(seeds)]:
            check_run(r.config, data)  # a bad spec fails before any training
    out = args.out_dir = prepare_out(args, "frontier")
    with user_errors():
        check_grid(grid, out, resume=args.resume is not None)
    t0 = time.perf_counter()
    payload = run_frontier(base, out, fractions=fractions, schedules=schedules, specs=specs, seeds=seeds, data=data,
                           resume=args.resume is not None, progress=progress_factory(args),
                           log=lambda m: log(args, m), command=args.command_line)
    log(args, "\n" + payload["table"] + f"\n\nreport: {out / 'frontier.md'} ({time.perf_counter() - t0:.0f}s in all)")
    return 0
