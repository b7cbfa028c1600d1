"""``ies train``: one run of one method, checkpointed after every epoch; ``--resume RUN_DIR`` continues it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (CLIError, add_run_args, log, make_progress, parse_method_spec, prepare_out, resolve_config,
                     user_errors)

__all__ = ["add_parser", "run"]

_KEEP_ON_RESUME = {"command", "method", "seed", "config", "out", "resume", "overwrite", "quiet", "jsonl", "threads",
                   "allow_nonfinite", "command_line"}


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="one run of one method (checkpointed every epoch; --resume continues it)")
    t.add_argument("--method", default=None, help="method, optionally with parameters: ies:threshold=0.001:order=2")
    t.add_argument("--seed", type=int, default=None)
    add_run_args(t)


def _config(args: argparse.Namespace):
    """The run's config: from the flags, or (``--resume``) from the run folder alone."""
    from ..experiments.config import RunConfig
    from ..experiments.runs import load_run_config, stillborn

    if args.resume is None:
        method, params = parse_method_spec(args.method) if args.method else (None, {})
        cfg = resolve_config(args, method=method, seed=args.seed)
        if params:
            with user_errors():
                cfg = RunConfig.from_dict({**cfg.to_dict(), "method_params": {**cfg.method_params, **params}}).resolved()
        return cfg
    given = sorted(k for k, v in vars(args).items() if k not in _KEEP_ON_RESUME and v not in (None, False))
    if given or args.method or args.seed is not None or args.config:
        raise CLIError("--resume continues the run with its saved settings; drop the run-configuration flags "
                       f"({', '.join(given) or 'method/seed/config'})")
    folder = Path(args.resume or args.out or "")
    with user_errors():
        if not (folder / "config.json").exists():
            raise ValueError(f"--resume {folder}: no config.json there, so it is not a run folder from `ies train`")
        if stillborn(folder):
            raise ValueError(f"--resume {folder}: the run was stopped as it started (config.json is empty or "
                             "unreadable, no epoch finished), so there is nothing to continue; run the original "
                             f"command again with --out {folder} (the folder counts as empty)")
        try:
            return RunConfig.from_dict(load_run_config(folder / "config.json")).resolved()
        except ValueError as e:
            raise ValueError(f"--resume {folder}: {folder / 'config.json'} was edited into a config that is not "
                             f"valid ({e}); restore it, or start again with --overwrite") from None


def run(args: argparse.Namespace) -> int:
    from ..experiments.engine import check_run
    from ..experiments.grid import train_run
    from ..experiments.runs import run_label

    cfg = _config(args)
    with user_errors():
        data = check_run(cfg)  # model, method and data checked before the folder is touched
    out = args.out_dir = prepare_out(args, "train")
    res = train_run(cfg, out, data=data, resume=args.resume is not None, allow_nonfinite=args.allow_nonfinite,
                    on_epoch=make_progress(args, cfg.epochs, cfg.method),
                    extra={"label": run_label(cfg.to_dict()), "command": args.command_line})
    if res is None:
        log(args, f"{out} is already complete; nothing to resume")
        return 0
    s = res.summary
    log(args, f"{cfg.method}: final test acc {s['final_test_acc']:.2f}%, backprop saved {100 * s['backprop_saved']:.1f}%, "
              f"compute saved {100 * s['compute_saved']:.1f}%, wall {s['wall_seconds']:.1f}s "
              f"(probe {100 * s['probe_share']:.0f}%) -> {out}")
    return 0
