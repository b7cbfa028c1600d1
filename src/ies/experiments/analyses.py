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
under ``runs/`` into ``--out`` (default ``runs/analyze-<what>-<time>``).

Analyses run single-threaded by default (``--threads 1``): the models are tiny and on a
shared CPU extra threads mostly add contention.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["add_commands", "cmd_analyze", "ANALYSES"]

ANALYSES = ("mastery", "cv", "gradnorm", "sharpness", "forgetting", "noise", "transfer")

_HELP = {
    "mastery": "samples meeting the order 0-3 criterion per epoch, removed vs kept training (Fig. 2)",
    "cv": "coefficient of variation across samples of order 0-3 loss differences, SGD and Adam (Fig. 3)",
    "gradnorm": "mean mini-batch gradient norm per epoch, IES vs no removal (Fig. 4)",
    "sharpness": "Hessian top eigenvalue and SAM value every few epochs, IES vs no removal (Fig. 4)",
    "forgetting": "are the first samples removed forgotten? loss/accuracy and re-inclusions (App. H)",
    "noise": "symmetric and instance-dependent label noise, IES vs no removal (App. G)",
    "transfer": "pretrain with/without IES, fine-tune only the head on other classes (Table 3)",
    "all": "every analysis, each into OUT/<name>/",
}


def _ints(v: str) -> List[int]:
    try:
        return [int(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {v!r}") from None


def _floats(v: str) -> List[float]:
    try:
        return [float(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {v!r}") from None


def _settings(v: str) -> List[tuple]:
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


def _add_specific(p: argparse.ArgumentParser, which: Sequence[str]) -> None:
    from ..cli import _positive_int

    g = p.add_argument_group("analysis options")
    if "mastery" in which or "cv" in which:
        g.add_argument("--orders", type=_ints, default=[0, 1, 2, 3], help="difference orders (default 0,1,2,3)")
    if "mastery" in which:
        g.add_argument("--threshold", type=float, default=1e-3, help="mastery: criterion threshold delta (default 1e-3)")
    if "cv" in which:
        g.add_argument("--optimizers", default="sgd,adam", help="cv: optimizers to compare (default sgd,adam)")
        g.add_argument("--sgd-lr", type=float, default=0.1,
                       help="cv: learning rate of SGD (default 0.1, the paper's); --lr sets the other optimizers'")
    if "sharpness" in which:
        g.add_argument("--every", type=_positive_int, default=5, help="sharpness: measure every K epochs (default 5)")
        g.add_argument("--subset", type=_positive_int, default=512,
                       help="sharpness: fixed training subset size (default 512)")
        g.add_argument("--iters", type=_positive_int, default=20, help="sharpness: power iterations (default 20)")
        g.add_argument("--rho", type=float, default=0.05, help="sharpness: SAM radius (default 0.05)")
    if "forgetting" in which:
        g.add_argument("--fraction", type=float, default=0.05, help="forgetting: first fraction removed (default 0.05)")
        g.add_argument("--at-epochs", type=_ints, default=None,
                       help="forgetting: epochs for the table (default 1, every 10th and the last)")
        g.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                       help="forgetting: follow the same samples in a no-removal run (default: on)")
    if "noise" in which:
        g.add_argument("--settings", type=_settings,
                       default=_settings("symmetric:0.2,symmetric:0.4,instance:0.2,instance:0.4"),
                       help="noise: KIND:RATE list (default symmetric:0.2,symmetric:0.4,instance:0.2,instance:0.4)")
        g.add_argument("--dd-rate", type=float, default=0.1,
                       help="noise: symmetric rate of the double-descent setting, 0 to skip (default 0.1)")
        g.add_argument("--dd-epochs", type=_positive_int, default=None,
                       help="noise: epochs of the double-descent setting (default 2x the run's epochs)")
        g.add_argument("--noise-seed", type=int, default=0, help="noise: seed of the noisy labels (default 0)")
    if "transfer" in which:
        g.add_argument("--source", type=_ints, default=[0, 1, 2, 3, 4], help="transfer: pretraining classes")
        g.add_argument("--target", type=_ints, default=[5, 6, 7, 8, 9], help="transfer: fine-tuning classes")
        g.add_argument("--head-epochs", type=_ints, default=[1, 5], help="transfer: head epochs (default 1,5)")
        g.add_argument("--head-lr", type=float, default=None,
                       help="transfer: Adam lr of the head (default: the run's lr for Adam, else 1e-3)")


def add_commands(sub: Any) -> None:
    """Add ``analyze`` (with one subcommand per analysis) to the ``ies`` command's subparsers."""
    from ..cli import _add_run_args, _positive_int

    a = sub.add_parser("analyze", help="the paper's analyses: mastery, cv, gradnorm, sharpness, forgetting, noise, transfer",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = a.add_subparsers(dest="what", required=True, metavar="WHAT")
    for name in (*ANALYSES, "all"):
        p = asub.add_parser(name, help=_HELP[name], description=_HELP[name])
        p.add_argument("--seeds", type=_positive_int, default=1, help="number of training seeds, 0..N-1 (default 1)")
        p.add_argument("--ies", default="ies", help="IES spec for the IES runs, e.g. ies:threshold=0.001 (default ies)")
        _add_specific(p, ANALYSES if name == "all" else (name,))
        _add_run_args(p)
        p.set_defaults(func=cmd_analyze)


def _run_one(name: str, args: argparse.Namespace, study_factory: Callable[[str], Any], ies_params: Dict[str, Any]):
    from .analysis import (cv_of_differences, forgetting, gradient_norm, label_noise, mastery_over_time,
                           sharpness, transfer)

    st = study_factory(name)
    if name == "mastery":
        return mastery_over_time(st, orders=args.orders, threshold=args.threshold, ies_params=ies_params)
    if name == "cv":
        opts = [o.strip() for o in args.optimizers.split(",") if o.strip()]
        return cv_of_differences(st, optimizers=opts, orders=args.orders, lr=args.lr, sgd_lr=args.sgd_lr)
    if name == "gradnorm":
        return gradient_norm(st, ies_params=ies_params)
    if name == "sharpness":
        return sharpness(st, ies_params=ies_params, every=args.every, subset_size=args.subset, iters=args.iters,
                         rho=args.rho)
    if name == "forgetting":
        return forgetting(st, fraction=args.fraction, at_epochs=args.at_epochs, ies_params=ies_params,
                          control=args.control)
    if name == "noise":
        settings = list(args.settings)
        if args.dd_rate and args.dd_rate > 0:
            settings.append(("symmetric", float(args.dd_rate), args.dd_epochs or 2 * int(st.base.epochs)))
        return label_noise(st, settings=settings, noise_seed=args.noise_seed, ies_params=ies_params)
    if name == "transfer":
        return transfer(st, source=args.source, target=args.target, head_epochs=args.head_epochs,
                        head_lr=args.head_lr, ies_params=ies_params)
    raise ValueError(f"unknown analysis {name!r}")


def _headline(name: str, s: Dict[str, Any]) -> str:
    """One line of the main numbers, for the terminal."""
    try:
        if name == "mastery":
            return "removed final mastered " + ", ".join(
                f"o{k}={v['final_mastered']:.0f}" for k, v in s["removed"].items()) + "; kept " + ", ".join(
                f"o{k}={v['final_mastered']:.0f}" for k, v in s["kept"].items())
        if name == "cv":
            return "; ".join(f"{o}: " + ", ".join(f"o{k[5:]}={v['mean_cv_diff']:.2f}" for k, v in d.items()
                                                    if k.startswith("order")) for o, d in s["by_optimizer"].items())
        if name in ("gradnorm", "sharpness"):
            keys = ["grad_norm"] if name == "gradnorm" else ["hessian_top_eig", "sam"]
            return "; ".join(f"{k}: none {s[k]['none']['mean']:.4g}, ies {s[k]['ies']['mean']:.4g}" for k in keys)
        if name == "forgetting":
            return (f"group re-included mean {s['group_reincluded_mean']:.2f}, max {s['group_reincluded_max']}; "
                    f"last-epoch group loss {s['at_epochs'][-1]['group_loss']:.4g} vs all {s['at_epochs'][-1]['all_loss']:.4g}")
        if name == "noise":
            return "; ".join(f"{n}: none {v['none']['best_test_acc']:.1f}%, ies {v['ies']['best_test_acc']:.1f}% "
                             f"(saved {100 * v['ies']['backprop_saved']:.0f}%)" for n, v in s["settings"].items())
        if name == "transfer":
            return "; ".join(f"{k}: none {s['none'][k]:.1f}%, ies {s['ies'][k]:.1f}%"
                             for k in s["none"] if k.startswith("transfer_acc"))
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    return ""


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..cli import CLIError, make_progress, parse_method_spec, resolve_config
    from .analysis.common import Study, write_json
    from .data import load_dataset

    name, ies_params = parse_method_spec(args.ies)
    if name != "ies":
        raise CLIError(f"--ies must be an ies spec like ies:threshold=0.001, got {args.ies!r}")
    from ..policies import build_policy

    build_policy("ies", 10, total_epochs=1, **ies_params)  # validate before training
    base = resolve_config(args, method="none")
    data = load_dataset(base.dataset, data_dir=base.data_dir, train_size=base.train_size,
                        val_fraction=base.val_fraction, data_seed=base.data_seed)
    out = Path(args.out) if args.out else Path("runs") / f"analyze-{args.what}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = " ".join(map(shlex.quote, ["ies", *sys.argv[1:]]))
    seeds = list(range(args.seeds))
    log = (lambda msg: None) if args.jsonl else (lambda msg: print(msg, flush=True))

    def factory(what: str) -> Study:
        d = out / what if args.what == "all" else out
        return Study(out=d, base=base, data=data, seeds=seeds, command=command, log=log,
                     progress=lambda total, desc: make_progress(args, total, f"{what}: {desc}"))

    names = ANALYSES if args.what == "all" else (args.what,)
    index: Dict[str, Any] = {}
    for what in names:
        t0 = time.perf_counter()
        payload = _run_one(what, args, factory, ies_params)
        dt = time.perf_counter() - t0
        where = out / what if args.what == "all" else out
        index[what] = {"folder": str(where), "seconds": dt, "summary": payload["summary"]}
        log(f"{what} ({dt:.0f}s): {_headline(what, payload['summary'])} -> {where / (what + '.png')}")
    if args.what == "all":
        write_json(out / "analyses.json", {"command": command, "analyses": index})
    return 0
