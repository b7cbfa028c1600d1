"""``ies report``: rebuild the comparison tables and plots from saved run folders, without training."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import user_errors

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    r = sub.add_parser("report", help="rebuild tables and plots from saved run folders, without training")
    r.add_argument("run_dirs", nargs="+", help="run folders, or folders containing them")
    r.add_argument("--out", help="where to write the report (default: the first folder given)")
    r.add_argument("--baseline", help="label the speedup is measured against (default: none)")
    r.add_argument("--include-incomplete", action="store_true",
                   help="report runs that did not finish (their last epoch) and unequal seed counts "
                        "(default: refuse them)")


def run(args: argparse.Namespace) -> int:
    from ..experiments.report import find_runs, format_table, write_comparison

    out = Path(args.out) if args.out else Path(args.run_dirs[0])
    with user_errors():
        payload = write_comparison(find_runs(args.run_dirs), out, baseline=args.baseline,
                                   title="IES comparison (rebuilt from saved runs)",
                                   include_incomplete=args.include_incomplete)
    print(format_table(payload["rows"]) + f"\n\nreport: {out / 'summary.md'}")
    return 0
