"""The ``ies`` command: train, compare and report (``ies --help``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "build_parser", "parse_method_spec"]

_CONFIG_FLAGS = {  # flag -> (RunConfig field, type, help)
    "--dataset": ("dataset", str, "mnist1d (default, generated locally), fashion-mnist, cifar10, cifar100"),
    "--data-dir": ("data_dir", str, "folder with the dataset files (fashion-mnist IDX, CIFAR python pickles)"),
    "--train-size": ("train_size", int, "number of training samples (mnist1d default 10000, with a quarter as many test samples)"),
    "--val-fraction": ("val_fraction", float, "held-out validation split carved from training data (0 = none)"),
    "--model": ("model", str, "model name (default: the dataset's; see `ies list`)"),
    "--epochs": ("epochs", int, "epochs to train"),
    "--batch-size": ("batch_size", int, "training batch size"),
    "--optimizer": ("optimizer", str, "sgd-f, sgd-l, sgd-m, sgd-e, sgd, adam, adamw (the paper's settings), adam-cos (see `ies list`)"),
    "--lr": ("lr", float, "learning rate (default: the optimizer's)"),
    "--weight-decay": ("weight_decay", float, "weight decay"),
    "--device": ("device", str, "cpu or cuda"),
    "--score-batch-size": ("score_batch_size", int, "batch size of the forward-only scoring pass"),
}


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def parse_method_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"ies:threshold=0.01:order=1"`` -> ``("ies", {"threshold": 0.01, "order": 1})``."""
    name, *parts = spec.strip().split(":")
    params: Dict[str, Any] = {}
    for p in parts:
        if "=" not in p:
            raise CLIError(f"bad method parameter {p!r} in {spec!r}: write NAME:key=value[:key=value]")
        k, v = p.split("=", 1)
        params[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return name.strip(), params


def _positive_int(v: str) -> int:
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if i < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return i


def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run configuration (override --config)")
    for flag, (dest, typ, hlp) in _CONFIG_FLAGS.items():
        g.add_argument(flag, dest=dest, type=_positive_int if typ is int else typ, default=None, help=hlp)
    g.add_argument("--augment", dest="augment", action=argparse.BooleanOptionalAction, default=None,
                   help="batched crop/flip/rotation for image data (test data is never augmented)")
    g.add_argument("--config", help="JSON file of RunConfig fields that sets defaults (flags override it)")
    o = p.add_argument_group("output")
    o.add_argument("--out", help="output folder (default: runs/<command>-<time>)")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    o.add_argument("--jsonl", action="store_true", help="print one JSON object per epoch on stdout (implies --quiet)")
    o.add_argument("--threads", type=_positive_int, default=1,
                   help="torch CPU threads (default 1: the default models are small, and on a shared CPU "
                        "extra threads mostly add contention that makes timings noisy)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="ies", description="Instance-dependent Early Stopping: train, compare methods and write reports.")
    p.add_argument("--version", action="version", version=f"ies {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="one run of one method")
    t.add_argument("--method", default=None, help="method, optionally with parameters: ies:threshold=0.001:order=2")
    t.add_argument("--seed", type=int, default=None)
    _add_run_args(t)

    c = sub.add_parser("compare", help="train several methods over seeds and write a report (the main job)")
    c.add_argument("--methods", default="none,ies",
                   help="comma-separated method specs, e.g. none,ies,ies:order=1 (default: none,ies)")
    c.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds, 0..N-1 (default 3)")
    _add_run_args(c)

    r = sub.add_parser("report", help="rebuild tables and plots from saved run folders, without training")
    r.add_argument("run_dirs", nargs="+", help="run folders, or folders containing them")
    r.add_argument("--out", help="where to write the report (default: the first folder given)")
    r.add_argument("--baseline", help="label the speedup is measured against (default: none)")

    sub.add_parser("list", help="list datasets, models, methods and optimizers")
    _add_extension_commands(sub)
    return p


def _add_extension_commands(sub: Any) -> None:
    """Commands contributed by other modules (trade-off sweeps, analyses) when present."""
    for mod in ("ies.experiments.tradeoff", "ies.experiments.analyses"):
        try:
            m = __import__(mod, fromlist=["add_commands"])
        except ImportError:
            continue
        if hasattr(m, "add_commands"):
            m.add_commands(sub)


def resolve_config(args: argparse.Namespace, **overrides: Any):
    """A RunConfig from --config, then flags, then ``overrides``."""
    from ..experiments.config import RunConfig

    base: Dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.exists():
            raise CLIError(f"config file {path} does not exist")
        base = RunConfig.from_file(str(path)).to_dict()
    names = {f.name for f in fields(RunConfig)}
    for k in names:
        v = getattr(args, k, None)
        if v is not None:
            base[k] = v
    base.update({k: v for k, v in overrides.items() if v is not None})
    return RunConfig.from_dict(base).resolved()


def _out_dir(args: argparse.Namespace, command: str) -> Path:
    if args.out:
        return Path(args.out)
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_progress(args: argparse.Namespace, total: int, desc: str) -> Callable[[Dict[str, Any]], None]:
    """Per-epoch callback: a tqdm bar (accuracy, active fraction, time), JSON lines, or nothing."""
    if getattr(args, "jsonl", False):
        def emit(row: Dict[str, Any]) -> None:
            print(json.dumps({"run": desc, **row}, default=str), flush=True)
        return emit
    if getattr(args, "quiet", False):
        return lambda row: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="epoch", leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(row: Dict[str, Any]) -> None:
        n = row["active"] + row["excluded"]
        bar.set_postfix(acc=f"{row['test_acc']:.1f}", active=f"{row['active'] / n:.0%}", t=f"{row['wall_seconds']:.1f}s")
        bar.update(1)
        if row["epoch"] >= total:
            bar.close()
    return update


def _log(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "jsonl", False):
        print(msg, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from ..experiments.engine import run_training
    from ..experiments.report import save_run

    method, params = parse_method_spec(args.method) if args.method else (None, {})
    cfg = resolve_config(args, method=method, seed=args.seed)
    if params:
        cfg.method_params = {**cfg.method_params, **params}
    out = _out_dir(args, "train")
    res = run_training(cfg, on_epoch=make_progress(args, cfg.epochs, cfg.method))
    save_run(res, out, extra={"command": " ".join(map(shlex.quote, sys.argv))})
    s = res.summary
    _log(args, f"{cfg.method}: final test acc {s['final_test_acc']:.2f}%, backprop saved {100 * s['backprop_saved']:.1f}%, "
               f"compute saved {100 * s['compute_saved']:.1f}%, wall {s['wall_seconds']:.1f}s -> {out}")
    return 0


def run_comparison(args: argparse.Namespace, specs: Sequence[Tuple[str, Dict[str, Any]]], seeds: Sequence[int],
                   out: Path, title: str, base_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train every (method, params) for every seed, alternating methods within a seed; write the report."""
    from ..experiments.data import load_dataset
    from ..experiments.engine import run_training
    from ..experiments.report import format_table, run_label, save_run, write_comparison

    overrides = base_overrides or {}
    configs = []
    for name, params in specs:
        cfg = resolve_config(args, method=name, **overrides)
        cfg.method_params = {**cfg.method_params, **params}
        from ..policies import build_policy  # validate parameters before any training starts

        build_policy(cfg.method, 10, total_epochs=cfg.epochs, **cfg.method_params)
        configs.append(cfg)
    c0 = configs[0]
    data = load_dataset(c0.dataset, data_dir=c0.data_dir, train_size=c0.train_size, val_fraction=c0.val_fraction,
                        data_seed=c0.data_seed)
    # Untimed warm-up (lazy imports, allocator, thread pools) so the first timed run is not penalized.
    from dataclasses import replace

    run_training(replace(c0, epochs=1, method="none", method_params={}), data)
    dirs: List[Path] = []
    command = " ".join(map(shlex.quote, ["ies", *sys.argv[1:]]))
    for seed in seeds:
        for cfg in configs:
            cfg = replace(cfg, seed=seed)
            label = run_label(cfg.to_dict())
            res = run_training(cfg, data, on_epoch=make_progress(args, cfg.epochs, f"{label} seed {seed}"))
            safe = label.replace("(", "_").replace(")", "").replace(", ", "_").replace("=", "-")
            d = save_run(res, out / "runs" / f"{safe}-seed{seed}", extra={"label": label, "command": command})
            dirs.append(d)
            s = res.summary
            _log(args, f"  {label} seed {seed}: acc {s['final_test_acc']:.2f}%, backprop saved "
                       f"{100 * s['backprop_saved']:.1f}%, wall {s['wall_seconds']:.1f}s")
    payload = write_comparison(dirs, out, title=title, command=command)
    _log(args, "\n" + format_table(payload["rows"]) + f"\n\nreport: {out / 'summary.md'}")
    return payload


def cmd_compare(args: argparse.Namespace) -> int:
    specs = [parse_method_spec(s) for s in args.methods.split(",") if s.strip()]
    if not specs:
        raise CLIError("--methods is empty; give e.g. --methods none,ies")
    run_comparison(args, specs, list(range(args.seeds)), _out_dir(args, "compare"), "IES comparison")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..experiments.report import find_runs, format_table, write_comparison

    dirs = find_runs(args.run_dirs)
    out = Path(args.out) if args.out else Path(args.run_dirs[0])
    payload = write_comparison(dirs, out, baseline=args.baseline, title="IES comparison (rebuilt from saved runs)")
    print(format_table(payload["rows"]) + f"\n\nreport: {out / 'summary.md'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..experiments.config import OPTIMIZERS
    from ..experiments.data import DATASETS
    from ..experiments.models import MODELS
    from ..policies import policy_names, policy_params

    print("datasets:  " + ", ".join(DATASETS))
    print("models:    " + ", ".join(sorted(MODELS)))
    print("methods:")
    for n in policy_names():
        print(f"  {n}: " + ", ".join(f"{k}={v!r}" for k, v in policy_params(n).items()))
    print("optimizers:")
    for k, v in OPTIMIZERS.items():
        print(f"  {k}: {v}")
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train, "compare": cmd_compare, "report": cmd_report, "list": cmd_list,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fn = COMMANDS.get(args.command) or getattr(args, "func", None)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))
    try:
        return fn(args)
    except (CLIError, ValueError, FileNotFoundError) as e:
        print(f"ies {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
