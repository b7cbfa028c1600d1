"""``ies analyze WHAT``: the paper's analyses, each a plot plus the numbers behind it.

=============  ===========================================================  ==================
WHAT           measures                                                     paper
=============  ===========================================================  ==================
mastery        samples meeting the order 0-3 criterion per epoch, with      Figure 2
               removal (IES order k) and without (none, criterion tracked)
cv             CV across samples of |order 0-3 loss differences| per        Figure 3, App. C
               epoch, SGD and Adam
gradnorm       mean mini-batch gradient norm per epoch, IES vs none         Figure 4
sharpness      Hessian top eigenvalue (power iteration) and SAM value on a  Figure 4
               fixed subset every few epochs, IES vs none
forgetting     the first 5% of samples removed: loss/accuracy over          Appendix H
               training vs the whole set; how often re-included
noise          symmetric and instance-dependent label noise: best          Appendix G
               accuracy, its epoch and backprop saved, IES vs none
transfer       pretrain on some classes with/without IES, fine-tune only    Table 3
               a new head on the other classes for 1 and 5 epochs
all            every analysis above, each into OUT/<what>/
=============  ===========================================================  ==================

Each writes ``<what>.png``, ``<what>.csv`` (the plotted numbers, per epoch and seed),
``<what>.json`` (summary, claim, command, config) and one run folder per training run
under ``runs/`` into ``--out`` (default ``runs/analyze-<what>-<time>``; an existing
``--out`` must be empty: analyses always start from scratch).

Analyses run single-threaded by default (``--threads 1``): the models are tiny and on a
shared CPU extra threads mostly add contention.

This module only reads flags; the analyses are :mod:`ies.experiments.analyses`.
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple

from ..experiments.analyses import ANALYSES, DESCRIPTIONS, AnalysisOptions, run_analyses
from .common import (CLIError, add_run_args, log, parse_method_spec, positive_int, prepare_out, progress_factory,
                     resolve_config, user_errors)

__all__ = ["add_parser", "run"]

_D = AnalysisOptions()  # every flag below takes its default from here


def _list_of(kind: Callable[[str], Any], what: str) -> Callable[[str], List[Any]]:
    def parse(v: str) -> List[Any]:
        try:
            return [kind(x.strip()) for x in v.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {v!r}") from None
    return parse


_ints = _list_of(int, "integers")
_names = _list_of(str, "names")


def _settings(v: str) -> List[Tuple[str, float, None]]:
    out = []
    for part in (p.strip() for p in v.split(",") if p.strip()):
        kind, _, rate = part.partition(":")
        try:
            r = float(rate)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad noise setting {part!r}: write KIND:RATE, e.g. symmetric:0.2") from None
        if kind not in ("symmetric", "instance") or not 0 <= r <= 1:
            raise argparse.ArgumentTypeError(f"bad noise setting {part!r}: KIND is symmetric or instance, RATE in [0, 1]")
        out.append((kind, r, None))
    return out


def _commas(xs: Sequence[Any]) -> str:
    return ",".join(map(str, xs))


def _add_dynamics(g: Any, which: Sequence[str]) -> None:
    if "mastery" in which or "cv" in which:
        g.add_argument("--orders", type=_ints, default=list(_D.orders),
                       help=f"difference orders (default {_commas(_D.orders)})")
    if "mastery" in which:
        g.add_argument("--threshold", type=float, default=_D.threshold,
                       help=f"mastery: criterion threshold delta (default {_D.threshold:g})")
    if "cv" in which:
        g.add_argument("--optimizers", type=_names, default=list(_D.optimizers),
                       help=f"cv: optimizers to compare (default {_commas(_D.optimizers)})")
        g.add_argument("--sgd-lr", type=float, default=_D.sgd_lr,
                       help=f"cv: learning rate of SGD (default {_D.sgd_lr:g}, the paper's); --lr sets the other "
                            "optimizers'")
    if "forgetting" in which:
        g.add_argument("--fraction", type=float, default=_D.fraction,
                       help=f"forgetting: first fraction removed (default {_D.fraction:g})")
        g.add_argument("--at-epochs", type=_ints, default=_D.at_epochs,
                       help="forgetting: epochs for the table (default 1, every 10th and the last)")
        g.add_argument("--control", action=argparse.BooleanOptionalAction, default=_D.control,
                       help="forgetting: follow the same samples in a no-removal run (default: on)")


def _add_landscape(g: Any, which: Sequence[str]) -> None:
    if "sharpness" in which:
        g.add_argument("--every", type=positive_int, default=_D.every,
                       help=f"sharpness: measure every K epochs (default {_D.every})")
        g.add_argument("--subset", type=positive_int, default=_D.subset,
                       help=f"sharpness: fixed training subset size (default {_D.subset})")
        g.add_argument("--iters", type=positive_int, default=_D.iters,
                       help=f"sharpness: power iterations (default {_D.iters})")
        g.add_argument("--rho", type=float, default=_D.rho, help=f"sharpness: SAM radius (default {_D.rho:g})")


def _add_robustness(g: Any, which: Sequence[str]) -> None:
    if "noise" in which:
        settings = ",".join(f"{k}:{r:g}" for k, r, _ in _D.settings)
        g.add_argument("--settings", type=_settings, default=list(_D.settings),
                       help=f"noise: KIND:RATE list (default {settings})")
        g.add_argument("--dd-rate", type=float, default=_D.dd_rate,
                       help=f"noise: symmetric rate of the double-descent setting, 0 to skip (default {_D.dd_rate:g})")
        g.add_argument("--dd-epochs", type=positive_int, default=_D.dd_epochs,
                       help="noise: epochs of the double-descent setting (default 2x the run's epochs)")
        g.add_argument("--noise-seed", type=int, default=_D.noise_seed,
                       help=f"noise: seed of the noisy labels (default {_D.noise_seed})")
    if "transfer" in which:
        g.add_argument("--source", type=_ints, default=list(_D.source), help="transfer: pretraining classes")
        g.add_argument("--target", type=_ints, default=list(_D.target), help="transfer: fine-tuning classes")
        g.add_argument("--head-epochs", type=_ints, default=list(_D.head_epochs),
                       help=f"transfer: head epochs (default {_commas(_D.head_epochs)})")
        g.add_argument("--head-lr", type=float, default=_D.head_lr,
                       help="transfer: Adam lr of the head (default: the run's lr for Adam, else 1e-3)")


def add_parser(sub: Any) -> None:
    """Add ``analyze`` (with one subcommand per analysis) to the ``ies`` command's subparsers."""
    a = sub.add_parser("analyze", help="the paper's analyses: " + ", ".join(ANALYSES),
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = a.add_subparsers(dest="what", required=True, metavar="WHAT")
    for name in (*ANALYSES, "all"):
        p = asub.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name])
        p.add_argument("--seeds", type=positive_int, default=1, help="number of training seeds, 0..N-1 (default 1)")
        p.add_argument("--ies", default="ies", help="IES spec for the IES runs, e.g. ies:threshold=0.001 (default ies)")
        which = ANALYSES if name == "all" else (name,)
        g = p.add_argument_group("analysis options")
        for add in (_add_dynamics, _add_landscape, _add_robustness):
            add(g, which)
        add_run_args(p, resumable=False)


def run(args: argparse.Namespace) -> int:
    """``ies analyze WHAT ...``: check the IES spec, the run configuration and ``--out``, then run."""
    from ..experiments.engine import check_run

    name, ies_params = parse_method_spec(args.ies)
    if name != "ies":
        raise CLIError(f"--ies must be an ies spec like ies:threshold=0.001, got {args.ies!r}")
    base = resolve_config(args, method="none")
    with user_errors():
        data = check_run(replace(base, method="ies", method_params=ies_params))  # before any folder or training
    if args.out and Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        raise CLIError(f"--out {args.out} is not empty; analyses start from scratch, so give a new or empty folder")
    out = prepare_out(args, f"analyze-{args.what}")
    options = AnalysisOptions(**{f.name: getattr(args, f.name) for f in fields(AnalysisOptions) if hasattr(args, f.name)})
    run_analyses(args.what, base=base, data=data, out=out, command=args.command_line, seeds=range(args.seeds),
                 options=options, ies_params=ies_params, log=lambda msg: log(args, msg),
                 progress=progress_factory(args), allow_nonfinite=args.allow_nonfinite)
    return 0
