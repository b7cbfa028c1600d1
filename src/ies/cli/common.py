"""What the ``ies`` commands share: the run-config flags, output folders, progress and user errors."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["CLIError", "user_errors", "parse_method_spec", "parse_method_specs", "positive_int", "add_run_args",
           "resolve_config", "prepare_out", "make_progress", "progress_factory", "log", "number_list", "name_list"]

# flag, its RunConfig field, type and help: one per line, parsed once below
_FLAG_TABLE = """
--dataset          dataset          str   mnist1d (default, generated locally), fashion-mnist, cifar10, cifar100; dense: seg-shapes, det-shapes, voc-seg, voc-det; text: text-topics
--data-dir         data_dir         str   folder with the dataset files (fashion-mnist IDX, CIFAR python pickles, the PASCAL VOC folder)
--train-size       train_size       int   number of training samples (mnist1d default 10000, with a quarter as many test samples)
--val-fraction     val_fraction     float held-out validation split carved from training data (0 = none)
--model            model            str   model name (default: the dataset's; see `ies list`)
--epochs           epochs           int   epochs to train
--batch-size       batch_size       int   training batch size
--optimizer        optimizer        str   sgd-f, sgd-l, sgd-m, sgd-e, sgd, adam, adamw (the paper's settings), adam-cos (see `ies list`)
--lr               lr               float learning rate (default: the optimizer's)
--weight-decay     weight_decay     float weight decay
--device           device           str   cpu or cuda
--probe-batch-size score_batch_size int   batch size of the forward-only probe pass (also --score-batch-size)
"""
_CONFIG_FLAGS = {flag: (dest, {"str": str, "int": int, "float": float}[typ], hlp)
                 for flag, dest, typ, hlp in (ln.split(None, 3) for ln in _FLAG_TABLE.strip().splitlines())}


class CLIError(Exception):
    """A user error: printed as one line without a traceback, exit status 2."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the ``ValueError`` of a validation step into a :class:`CLIError` (use around validation only)."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def _parse_value(v: str) -> Any:
    if len(v) > 100:  # a number or a word; a long one is a typo (or deeply nested JSON)
        raise CLIError(f"method parameter value {v[:20]!r}... is {len(v)} characters; give a number or a word")
    try:
        return json.loads(v)
    except (json.JSONDecodeError, RecursionError):
        return v


def parse_method_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"ies:threshold=0.01:order=1"`` -> ``("ies", {"threshold": 0.01, "order": 1})``."""
    name, *parts = spec.strip().split(":")
    params: Dict[str, Any] = {}
    for p in parts:
        if "=" not in p:
            raise CLIError(f"bad method parameter {p!r} in {spec!r}: write NAME:key=value[:key=value]")
        k, v = p.split("=", 1)
        k = k.strip().replace("-", "_")
        if k in params:
            raise CLIError(f"method parameter {k} is given twice in {spec!r}; give each parameter once")
        params[k] = _parse_value(v.strip())
    return name.strip(), params


def parse_method_specs(text: str, flag: str = "--methods") -> List[Tuple[str, Dict[str, Any]]]:
    """A comma-separated list of specs; empty lists and the same spec twice are refused."""
    specs = [parse_method_spec(s) for s in text.split(",") if s.strip()]
    if not specs:
        raise CLIError(f"{flag} is empty; give e.g. {flag} none,ies")
    seen: List[Tuple[str, Dict[str, Any]]] = []
    for s in specs:
        if s in seen:
            raise CLIError(f"{flag} lists {s[0]}{''.join(f':{k}={v}' for k, v in s[1].items())} twice; list each "
                           "method spec once (--seeds sets the repeats)")
        seen.append(s)
    return specs


def positive_int(v: str) -> int:
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if i < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return i


def thread_count(v: str) -> int:
    """``--threads``: 1 .. this machine's CPU count (far more threads than CPUs crash torch's thread pool)."""
    import os

    i, most = positive_int(v), os.cpu_count() or 1
    if i > most:
        raise argparse.ArgumentTypeError(f"{v} is more than this machine's {most} CPUs; pass at most {most}")
    return i


def number_list(text: str, what: str, kind: type = float) -> list:
    """``"1,2,3"`` -> numbers of ``kind``; CLIError naming ``what`` otherwise."""
    noun = "integers" if kind is int else "numbers"
    try:
        vals = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated {noun}, got {text!r}") from None
    if not vals:
        raise CLIError(f"{what} is empty")
    return vals


def name_list(text: str, allowed: Sequence[str], what: str) -> List[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise CLIError(f"{what}: {', '.join(bad) or '(empty)'} not supported here; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def add_run_args(p: argparse.ArgumentParser, *, resumable: bool = True) -> None:
    """The run-configuration flags and the output flags every training command takes."""
    g = p.add_argument_group("run configuration (override --config)")
    aliases = {"--probe-batch-size": ("--score-batch-size",)}  # the flag's name before issue 13
    for flag, (dest, typ, hlp) in _CONFIG_FLAGS.items():
        g.add_argument(flag, *aliases.get(flag, ()), dest=dest, type=positive_int if typ is int else typ, default=None,
                       help=hlp)
    g.add_argument("--augment", dest="augment", action=argparse.BooleanOptionalAction, default=None,
                   help="batched crop/flip/rotation for image data (test data is never augmented)")
    g.add_argument("--task", choices=sorted(_TASK_DATASETS),
                   help="segmentation or detection: the synthetic shapes dataset of that task unless --dataset names "
                        "another of it (docs/dense.md); classification: the default")
    g.add_argument("--config", help="JSON file of RunConfig fields that sets defaults (flags override it)")
    g.add_argument("--allow-nonfinite", action="store_true",
                   help="keep training through an epoch whose training losses are all NaN/inf (default: stop)")
    o = p.add_argument_group("output")
    o.add_argument("--out", help="output folder (default: a new runs/<command>-<time>)")
    if resumable:
        o.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                       help="continue the runs in DIR (or --out): finished runs are kept, an interrupted one "
                            "continues from its last finished epoch")
        o.add_argument("--overwrite", action="store_true", help="delete a non-empty --out first (ies folders only)")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    o.add_argument("--jsonl", action="store_true", help="print one JSON object per epoch on stdout (implies --quiet)")
    o.add_argument("--threads", type=thread_count, default=1,
                   help="torch CPU threads (default 1: the default models are small, and on a shared CPU "
                        "extra threads mostly add contention that makes timings noisy)")


def resolve_config(args: argparse.Namespace, **overrides: Any):
    """A validated RunConfig from --config, then flags, then ``overrides`` (CLIError if invalid)."""
    from ..experiments.config import RunConfig

    with user_errors():
        base: Dict[str, Any] = {}
        if getattr(args, "config", None):
            path = Path(args.config)
            if not path.exists():
                raise CLIError(f"config file {path} does not exist")
            base = RunConfig.from_file(str(path)).to_dict()
        for k in (f.name for f in fields(RunConfig)):
            v = getattr(args, k, None)
            if v is not None:
                base[k] = v
        base.update({k: v for k, v in overrides.items() if v is not None})
        if getattr(args, "task", None) is not None:
            base["dataset"] = _dataset_for_task(args.task, base.get("dataset"))
        return RunConfig.from_dict(base).resolved()


_TASK_DATASETS = {"classification": "mnist1d", "segmentation": "seg-shapes", "detection": "det-shapes"}


def _dataset_for_task(task: str, dataset: Optional[str]) -> str:
    """The dataset ``--task`` implies, or ``dataset`` if it is of that task (CLIError otherwise)."""
    from ..experiments.data import DATASET_INPUTS

    if dataset is None:
        return _TASK_DATASETS[task]
    kind = DATASET_INPUTS.get(dataset)
    if kind is not None and (kind if kind in ("segmentation", "detection") else "classification") != task:
        same = [d for d, k in DATASET_INPUTS.items() if k == task] or ["mnist1d", "fashion-mnist", "cifar10"]
        raise CLIError(f"--dataset {dataset} is not a {task} dataset; use one of {', '.join(same)} or drop --task")
    return dataset


def prepare_out(args: argparse.Namespace, command: str) -> Path:
    """The output folder, validated and created before any training."""
    from ..experiments.runs import prepare_out as _prepare

    resume = getattr(args, "resume", None)
    out = args.out
    if resume:  # --resume DIR
        if out is not None and Path(out) != Path(resume):
            raise CLIError(f"--resume {resume} and --out {out} name different folders; give one")
        out = resume
    with user_errors():
        return _prepare(out, command, resume=resume is not None, overwrite=getattr(args, "overwrite", False))


def make_progress(args: argparse.Namespace, total: int, desc: str) -> Callable[[Dict[str, Any]], None]:
    """Per-epoch callback: a tqdm bar on a terminal, one plain line per epoch otherwise, JSON lines, or nothing."""
    if getattr(args, "jsonl", False):
        def emit(row: Dict[str, Any]) -> None:
            print(json.dumps({"run": desc, **row}, default=str), flush=True)
        return emit
    if getattr(args, "quiet", False):
        return lambda row: None

    def status(row: Dict[str, Any]) -> Dict[str, str]:
        n = row["active"] + row["excluded"]
        return {"acc": f"{row['test_acc']:.1f}", "active": f"{row['active'] / n:.0%}",
                "probe": f"{row.get('probe_share', 0.0):.0%}", "t": f"{row['wall_seconds']:.1f}s"}

    if not sys.stderr.isatty():  # a log file: one line per epoch, no carriage returns
        def line(row: Dict[str, Any]) -> None:
            s = status(row)
            print(f"{desc} epoch {row['epoch']}/{total}: " + " ".join(f"{k}={v}" for k, v in s.items()),
                  file=sys.stderr, flush=True)
        return line
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="epoch", leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(row: Dict[str, Any]) -> None:
        bar.set_postfix(status(row))
        bar.update(1)
        if row["epoch"] >= total:
            bar.close()
    return update


def progress_factory(args: argparse.Namespace) -> Callable[[int, str], Callable[[Dict[str, Any]], None]]:
    """``(epochs, description) -> per-epoch callback``, the shape the grid runner takes."""
    return lambda total, desc: make_progress(args, total, desc)


def log(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "jsonl", False):
        print(msg, flush=True)
