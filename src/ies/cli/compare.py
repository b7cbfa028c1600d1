"""``ies compare``: several methods over seeds, one report (the main job)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from .common import (add_run_args, log, parse_method_specs, positive_int, prepare_out, progress_factory,
                     resolve_config, user_errors)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    c = sub.add_parser("compare", help="train several methods over seeds and write a report (the main job)")
    c.add_argument("--methods", default="none,ies",
                   help="comma-separated method specs, e.g. none,ies,ies:order=1 (default: none,ies)")
    c.add_argument("--seeds", type=positive_int, default=3, help="number of seeds, 0..N-1 (default 3)")
    add_run_args(c)


def run(args: argparse.Namespace) -> int:
    from ..experiments.engine import check_run
    from ..experiments.grid import GridRun, check_grid, run_grid
    from ..experiments.report import format_table, write_comparison
    from ..experiments.runs import run_label

    configs = []
    for name, params in parse_method_specs(args.methods):
        cfg = resolve_config(args, method=name)
        with user_errors():
            configs.append(replace(cfg, method_params={**cfg.method_params, **params}).resolved())
    with user_errors():
        data = check_run(configs[0])
        for cfg in configs[1:]:
            check_run(cfg, data)
    runs = [GridRun(run_label(c.to_dict()), replace(c, seed=s)) for s in range(args.seeds) for c in configs]
    out = args.out_dir = prepare_out(args, "compare")
    with user_errors():
        check_grid(runs, out, resume=args.resume is not None)
    dirs = run_grid(runs, out, data=data, resume=args.resume is not None, progress=progress_factory(args),
                    log=lambda m: log(args, m), extra={"command": args.command_line},
                    allow_nonfinite=args.allow_nonfinite)
    payload = write_comparison(dirs, out, title="IES comparison", command=args.command_line)
    log(args, "\n" + format_table(payload["rows"]) + f"\n\nreport: {out / 'summary.md'}")
    return 0
