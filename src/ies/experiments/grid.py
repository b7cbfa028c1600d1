"""One runner for one run in its folder, and for grids of runs (compare, tradeoff, budget, analyses).

Every run goes through :func:`train_run`: the folder is created exclusively, marked
``running``, checkpointed after every epoch, and marked ``complete``, ``failed`` or
``interrupted``. With ``resume`` a complete run is skipped and an unfinished one
continues from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .config import RunConfig
from .data import TensorData
from .engine import EngineCallback, RunResult, load_run_data, run_training
from .runlock import locked, remove_orphan_tmp
from .runs import RunFolder, RunFolderError, load_run_config, make_dir, run_dir_name, stillborn

__all__ = ["GridRun", "Progress", "train_run", "run_grid", "check_grid", "warm_up", "no_progress"]

Progress = Callable[[int, str], Callable[[Dict[str, Any]], None]]  # (epochs, description) -> per-epoch callback


def no_progress(total: int, desc: str) -> Callable[[Dict[str, Any]], None]:
    return lambda row: None


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: its label (the report's row name) and its config (seed included)."""

    label: str
    config: RunConfig

    @property
    def folder(self) -> str:
        return run_dir_name(self.label, self.config.seed)


def train_run(cfg: RunConfig, run_dir: Path, *, data: Optional[TensorData] = None, resume: bool = False,
              on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None, callbacks: Sequence[EngineCallback] = (),
              keep_model: bool = False, extra: Optional[Dict[str, Any]] = None,
              allow_nonfinite: bool = False) -> Optional[RunResult]:
    """Train ``cfg`` into ``run_dir``; returns the result, or None if ``resume`` found it complete.

    Without ``resume`` the folder must be new or empty. With it, a missing folder starts fresh, a
    folder that never finished an epoch starts again, and any other continues from its
    checkpoint (checksum and values checked first). The folder is locked while the run trains
    (:class:`~ies.experiments.runlock.FolderLocked` if another process holds it).
    ``KeyboardInterrupt`` marks the run ``interrupted`` (the last checkpoint stays); any other
    exception marks it ``failed`` with the reason and propagates.
    """
    cfg = cfg.resolved()
    folder = RunFolder(run_dir)
    if not folder.path.exists():
        make_dir(folder.path)
    with locked(folder.path):  # FolderLocked if another process runs it
        remove_orphan_tmp(folder.path)
        state = _open(folder, cfg, extra, resume)
        if state is _COMPLETE:
            return None
        try:
            res = run_training(cfg, data, on_epoch=on_epoch, keep_model=keep_model, callbacks=callbacks,
                               on_checkpoint=folder.save_epoch, resume=state, allow_nonfinite=allow_nonfinite)
            folder.complete(res)  # a full disk here too ends the run failed, with the reason
        except KeyboardInterrupt as e:
            folder.fail(e, interrupted=True)
            raise
        except BaseException as e:
            folder.fail(e)
            raise
    return res


_COMPLETE = object()  # _open's answer for a run that resume finds complete


def _open(folder: RunFolder, cfg: RunConfig, extra: Optional[Dict[str, Any]], resume: bool) -> Any:
    """Start the run in its locked folder, or (``resume``) its checked checkpoint, None, or ``_COMPLETE``.

    A checkpoint that fails its checksum or value checks marks the run ``failed`` with the reason.
    """
    if not resume or not (folder.path / "config.json").exists() or stillborn(folder.path):
        folder.start(cfg.to_dict(), extra, claim=not resume)
        return None
    if folder.status()["status"] == "complete":
        folder.drop_checkpoint()
        return _COMPLETE
    try:
        state = folder.checkpoint(cfg.to_dict())
    except RunFolderError as e:
        folder.fail(e)
        raise
    if state is None:
        folder.start(cfg.to_dict(), extra, claim=False)
    return state


def warm_up(cfg: RunConfig, data: TensorData) -> None:
    """One untimed epoch (lazy imports, allocator, thread pools) so the first timed run is not penalized."""
    run_training(replace(cfg, epochs=1, method="none", method_params={}), data)


def check_grid(runs: Sequence[GridRun], out: Path, *, resume: bool = False) -> None:
    """``ValueError`` before any training: two runs sharing a folder, or (``resume``) a saved run whose
    config differs from the one asked for now."""
    names = [r.folder for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"the grid has duplicate runs ({', '.join(dup)}); list each method spec once")
    for r in runs if resume else ():
        saved = out / "runs" / r.folder / "config.json"
        if not saved.exists() or stillborn(saved.parent):
            continue
        old, new = load_run_config(saved), r.config.resolved().to_dict()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise ValueError(f"--resume: {saved.parent} was run with other settings ({', '.join(diff)}); "
                             "repeat the original command's flags, or use another --out")


def run_grid(runs: Sequence[GridRun], out: Path, *, data: Optional[TensorData] = None, resume: bool = False,
             progress: Progress = no_progress, log: Callable[[str], None] = lambda msg: None,
             extra: Optional[Dict[str, Any]] = None, allow_nonfinite: bool = False) -> List[Path]:
    """Train every run into ``out/runs/<label>-seed<seed>``, in the given order; returns the run folders.

    Order the runs seed by seed, methods alternating, so timings share the machine's state.
    ``data`` defaults to the first config's dataset (every run must use the same data).
    Duplicate folders are refused before anything trains. One untimed warm-up epoch runs
    first if anything is left to train.
    """
    check_grid(runs, out, resume=resume)
    if not runs:
        return []
    data = load_run_data(runs[0].config.resolved()) if data is None else data
    todo = [r for r in runs if not (resume and RunFolder(out / "runs" / r.folder).status()["status"] == "complete")]
    if todo:
        warm_up(todo[0].config, data)
    dirs = []
    for r in runs:
        d = out / "runs" / r.folder
        dirs.append(d)
        if r not in todo:
            log(f"  {r.label} seed {r.config.seed}: complete, skipped")
            continue
        res = train_run(r.config, d, data=data, resume=resume, allow_nonfinite=allow_nonfinite,
                        on_epoch=progress(int(r.config.resolved().epochs), f"{r.label} seed {r.config.seed}"),
                        extra={"label": r.label, **(extra or {})})
        s = res.summary
        log(f"  {r.label} seed {r.config.seed}: acc {s['final_test_acc']:.2f}%, backprop saved "
            f"{100 * s['backprop_saved']:.1f}%, compute saved {100 * s['compute_saved']:.1f}%, "
            f"probe {100 * s['probe_share']:.0f}% of wall {s['wall_seconds']:.1f}s")
    return dirs
