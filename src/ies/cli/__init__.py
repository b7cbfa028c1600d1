"""The ``ies`` command: train, compare, report, sweeps and analyses (``ies --help``).

A thin layer over :mod:`ies.experiments`: each command is a module with
``add_parser(subparsers)`` and ``run(args) -> int``, listed in :data:`COMMANDS`.
User errors (a :class:`CLIError`, raised where a validation fails) print one line and
exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Dict, Optional, Sequence

from . import analyze, budget, compare, frontier, listing, report, tradeoff, train
from .common import CLIError, parse_method_spec

__all__ = ["main", "build_parser", "parse_method_spec", "CLIError", "COMMANDS"]

COMMANDS: Dict[str, object] = {  # name -> module with add_parser(subparsers) and run(args)
    "train": train, "compare": compare, "report": report, "list": listing,
    "tradeoff": tradeoff, "budget": budget, "analyze": analyze, "frontier": frontier,
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="ies", description="Instance-dependent Early Stopping: train, compare methods and write reports.")
    p.add_argument("--version", action="version", version=f"ies {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)  # type: ignore[attr-defined]
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``ies ARGV``; the command line recorded with each run is this ``argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "ies " + shlex.join(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))
    from ..experiments.engine import TrainingDiverged
    from ..experiments.runlock import RunFolderError, release_all

    try:
        return COMMANDS[args.command].run(args)  # type: ignore[attr-defined]
    except (CLIError, RunFolderError) as e:  # RunFolderError: a locked, damaged or edited run folder
        print(f"ies {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"ies {args.command}: stopped: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the disk or the file system (full disk, read-only folder): say which file
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f) or "a file"
        print(f"ies {args.command}: error: {e.strerror or e}: {where}; free space or fix permissions (a run it "
              "stopped is marked failed where its folder could be written; continue it with --resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nies {args.command}: {_interrupted(args)}", file=sys.stderr)
        return 130
    finally:
        release_all()  # the run folders this command locked


def _interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C left: the last finished epoch (or, for ies train, none yet) and how to continue."""
    out = getattr(args, "out_dir", None)
    if out is None:
        return "interrupted before anything was saved"
    again = "ies train" if args.command == "train" else "the same command with"
    hint = f"continue with: {again} --resume {shlex.quote(str(out))}"
    if args.command == "train":
        from ..experiments.runs import RunFolder, RunFolderError

        try:
            done = RunFolder(out).status().get("epochs_done")
        except RunFolderError:
            done = None
        if not done:
            return f"interrupted before the first epoch finished, so no epoch is saved; {hint} (it starts over)"
    return f"interrupted, the last finished epoch is saved; {hint}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
