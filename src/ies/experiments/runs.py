"""Run folders: naming, exclusive creation, status markers, per-epoch files and checkpoints.

A run folder holds ``config.json`` (resolved config + environment, written first),
``status.json`` (``running`` / ``interrupted`` / ``failed`` / ``complete``, with the epochs
done), ``metrics.csv`` (rewritten atomically after every epoch), ``checkpoint.pt`` (while
the run is not complete) and, once complete, ``summary.json`` and ``per_sample.npz``.
Folders are created with ``os.mkdir`` (never ``exist_ok``) and locked for the run's life
(:mod:`.runlock`), so two runs never share one; every file is written atomically and durably
(tmp, fsync, rename), and the checkpoint carries its SHA-256 (:mod:`.checkpoints`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from .checkpoints import SIDECAR, check_values, verify_checksum, write_checkpoint
from .runlock import (LOCK_NAME, RunFolderError, acquire, atomic_write_bytes, atomic_write_json, release,
                      remove_orphan_tmp)
from .tables import read_csv

__all__ = ["RunFolder", "environment", "safe_name", "run_dir_name", "run_label", "prepare_out", "make_dir",
           "save_run", "load_run", "load_run_config", "find_runs", "RUN_STATUSES", "CHECKPOINT", "RunFolderError",
           "stillborn", "JSON_MAX_BYTES"]

RUN_STATUSES = ("running", "interrupted", "failed", "complete")
CHECKPOINT = "checkpoint.pt"
_OURS = ("config.json", "status.json", "runs", "summary.md", "summary.json")  # what marks an ies output folder
JSON_MAX_BYTES = 16 << 20  # a run's JSON files are a few KB; a bigger one is not ours (or is /dev/zero)


def environment() -> Dict[str, Any]:
    import torch

    from .. import __version__

    return {
        "ies_version": __version__, "torch_version": torch.__version__, "python_version": sys.version.split()[0],
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }


def run_label(config: Dict[str, Any]) -> str:
    """``method`` or ``method(k=v, ...)`` from a run's config."""
    params = config.get("method_params") or {}
    if not params:
        return config["method"]
    return f"{config['method']}(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"


def safe_name(label: str) -> str:
    """A file-name-safe form of a label: ``ies(order=1, threshold=0.1)`` -> ``ies_order-1_threshold-0.1``."""
    s = label.replace("(", "_").replace(")", "").replace(", ", "_").replace("=", "-")
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in s).strip("_") or "run"


def run_dir_name(label: str, seed: int) -> str:
    """The one naming scheme of run folders inside a comparison: ``<safe label>-seed<seed>``."""
    return f"{safe_name(label)}-seed{seed}"


def make_dir(path: Path) -> Path:
    """Create ``path`` (parents as needed); ``FileExistsError`` if it already exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkdir(path)
    return path


def _default_out(command: str, root: Path = Path("runs")) -> Path:
    stem = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 1000):
        try:
            return make_dir(root / (stem if i == 1 else f"{stem}-{i}"))
        except FileExistsError:
            continue
        except OSError as e:
            raise ValueError(f"cannot create {root / stem}: {e.strerror}; pass --out with a folder you can write to") from None
    raise ValueError(f"could not create a fresh folder {root / stem}-N; pass --out")


def _contents(p: Path) -> List[str]:
    """The folder's entries, not counting the lock file and a killed writer's tmp files."""
    return [q.name for q in p.iterdir() if q.name != LOCK_NAME and not (q.name.startswith(".") and q.name.endswith(".tmp"))]


def stillborn(p: Path) -> bool:
    """A run folder killed as it started: ``config.json`` empty or unreadable, and no epoch saved."""
    cfg = p / "config.json"
    if not cfg.is_file() or not set(_contents(p)) <= {"config.json", "status.json"}:
        return False
    try:
        meta = json.loads(cfg.read_text()) if cfg.stat().st_size <= JSON_MAX_BYTES else None
    except (OSError, ValueError, RecursionError):
        meta = None
    return not (isinstance(meta, dict) and "config" in meta)


def _make(p: Path) -> Path:
    try:
        return make_dir(p)
    except FileExistsError:
        raise ValueError(f"--out {p} was created by another process just now; give another folder") from None
    except OSError as e:
        raise ValueError(f"cannot create --out {p}: {e.strerror}; choose a folder you can write to") from None


def prepare_out(out: Optional[os.PathLike], command: str, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Validate, create and lock the output folder before any training.

    No ``out``: a fresh ``runs/<command>-<time>[-N]``. An existing non-empty folder needs
    ``resume`` (continue what is in it) or ``overwrite`` (delete it first; only folders that
    ies wrote and no live process holds). The folder stays locked until the process ends or
    :func:`.runlock.release_all`. ``ValueError`` names the problem and the flag that fixes it.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pass one")
    if out is None:
        if resume:
            raise ValueError("--resume needs the folder to continue: pass --out FOLDER")
        p = _default_out(command)
        acquire(p)
        return p
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file, not a folder; give a folder path")
    if not p.exists():
        if resume:
            raise ValueError(f"--resume: {p} does not exist, so there is nothing to continue; drop --resume")
        _make(p)
    acquire(p)  # FolderLocked names the live process that holds it
    try:
        _claim(p, command, resume, overwrite)
    except BaseException:
        release(p)
        raise
    return p


def _claim(p: Path, command: str, resume: bool, overwrite: bool) -> None:
    """``p`` is locked: clear what a killed start left, then check it may be used as asked."""
    remove_orphan_tmp(p)
    if stillborn(p) and not resume:  # killed within its first moments: nothing in it is worth keeping
        for n in _contents(p):
            (p / n).unlink()
    if resume and command != "train" and (p / "config.json").exists():
        raise ValueError(f"--resume: {p} is the folder of one `ies train` run, not of `ies {command}`; continue it "
                         f"with: ies train --resume {p}")
    if not _contents(p) or resume:
        return
    if not overwrite:
        raise ValueError(f"--out {p} is not empty; pass --resume to continue the runs in it, "
                         "or --overwrite to delete it and start again")
    if not any((p / name).exists() for name in _OURS):
        raise ValueError(f"--overwrite: {p} does not look like an ies output folder (no config.json, runs/ or "
                         "summary.md); refusing to delete it, choose another --out")
    for n in _contents(p):  # the lock file stays: deleting it would let a second process lock a new one
        q = p / n
        if q.is_dir() and not q.is_symlink():
            shutil.rmtree(q)
        else:
            q.unlink()


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends (a checkpoint is never left half-written); then raise it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt


def _csv_bytes(rows: Sequence[Dict[str, Any]]) -> bytes:
    """CSV with the union of the rows' keys as columns (first-seen order), as ``tables.write_csv`` writes it."""
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    return buf.getvalue().encode()


class RunFolder:
    """One run's folder: ``start`` it, save each epoch, then ``complete``/``fail``/``interrupt`` it.

    The caller holds the folder's lock (:func:`.runlock.acquire`) while it writes.
    """

    def __init__(self, path: os.PathLike) -> None:
        self.path = Path(path)

    def status(self) -> Dict[str, Any]:
        """``{"status": ..., "epochs_done": ...}``; folders from before status files count as complete.

        A status file that is not one :class:`RunFolderError` names, and so is a ``complete``
        without its ``summary.json``.
        """
        f = self.path / "status.json"
        if not f.exists():
            done = (self.path / "summary.json").exists()
            return {"status": "complete" if done else "unknown", "epochs_done": None}
        try:
            st = _read_json(f)
        except ValueError as e:
            raise RunFolderError(f"{e}; the run's status is lost: start it again with --overwrite") from None
        if not isinstance(st, dict) or st.get("status") not in RUN_STATUSES:
            got = st.get("status") if isinstance(st, dict) else type(st).__name__
            raise RunFolderError(f"{f}: field status must be one of {', '.join(RUN_STATUSES)}, got {got!r}; the file "
                                 "was edited or damaged, start the run again with --overwrite")
        if st["status"] == "complete" and not (self.path / "summary.json").is_file():
            raise RunFolderError(f"{f} says complete but {self.path / 'summary.json'} is missing; the folder was "
                                 "edited or damaged, start the run again with --overwrite")
        return st

    def start(self, config: Dict[str, Any], extra: Optional[Dict[str, Any]] = None, *, claim: bool = True) -> None:
        """Write ``config.json`` (atomically: it is whole or absent) and mark the run running.

        ``claim``: ``FileExistsError`` if the folder already holds a run's config (a killed
        start's empty one does not count).
        """
        if not self.path.exists():
            make_dir(self.path)
        cfg = self.path / "config.json"
        if claim and cfg.exists() and not stillborn(self.path):
            raise FileExistsError(f"{cfg} exists: the folder already holds a run")
        atomic_write_json(cfg, {"config": config, "environment": environment(), **(extra or {})})
        self._mark("running", 0)

    def _mark(self, status: str, epochs_done: Optional[int], error: Optional[str] = None,
              digest: Optional[str] = None) -> None:
        atomic_write_json(self.path / "status.json", {
            "status": status, "epochs_done": epochs_done, "error": error, "checkpoint_sha256": digest,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def save_epoch(self, state: Dict[str, Any]) -> None:
        """After each epoch: ``metrics.csv``, ``checkpoint.pt`` with its SHA-256 (atomically), the status."""
        with _sigint_deferred():
            atomic_write_bytes(self.path / "metrics.csv", _csv_bytes(state["rows"]), sync=False)
            digest = write_checkpoint(state, self.path / CHECKPOINT)  # fsynced before its rename
            self._mark("running", len(state["rows"]), digest=digest)  # fsyncs the folder: all renames above

    def checkpoint(self, config: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """The last checkpoint, checksum- and value-checked against ``config``; None if no epoch finished."""
        import torch

        f = self.path / CHECKPOINT
        if not f.exists():
            return None
        st = self.status() if (self.path / "status.json").exists() else {}
        verify_checksum(f, st.get("checkpoint_sha256"))
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: say which, and how to recover
            raise RunFolderError(f"cannot read checkpoint {f} ({str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                 "); start the run again with --overwrite") from None
        if config is not None:
            check_values(state, f, config)
        return state

    def complete(self, result: Any) -> None:
        """Final files; the checkpoint is removed (a complete run is never resumed)."""
        atomic_write_bytes(self.path / "metrics.csv", _csv_bytes(result.epochs))
        atomic_write_json(self.path / "summary.json", result.summary)
        if result.per_sample:
            import numpy as np

            buf = io.BytesIO()
            np.savez(buf, **{k: v.numpy() for k, v in result.per_sample.items()})
            atomic_write_bytes(self.path / "per_sample.npz", buf.getvalue())
        self._mark("complete", len(result.epochs))
        self.drop_checkpoint()

    def drop_checkpoint(self) -> None:
        """Remove a complete run's checkpoint, its digest and tmp files (also what a kill right after
        ``complete`` was marked left behind)."""
        (self.path / CHECKPOINT).unlink(missing_ok=True)
        (self.path / (CHECKPOINT + SIDECAR)).unlink(missing_ok=True)
        remove_orphan_tmp(self.path)

    def fail(self, error: BaseException, *, interrupted: bool = False) -> None:
        """Mark the run ``interrupted`` or ``failed`` with the reason; a folder that cannot be written stays as is."""
        try:
            st = self.status()
        except RunFolderError:
            st = {}
        reason = None if interrupted else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        try:
            self._mark("interrupted" if interrupted else "failed", st.get("epochs_done"), reason,
                       digest=st.get("checkpoint_sha256"))
        except OSError:
            pass  # a full or read-only disk: the error that brought us here is the one to report


def save_run(result: Any, run_dir: os.PathLike, *, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write a finished :class:`~ies.experiments.engine.RunResult` into a new folder (or an empty one)."""
    folder = RunFolder(run_dir)
    if not folder.path.exists():
        make_dir(folder.path)
    acquire(folder.path)
    try:
        folder.start(result.config, extra)
        folder.complete(result)
    finally:
        release(folder.path)
    return folder.path


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > JSON_MAX_BYTES:
            raise ValueError(f"cannot read {path}: larger than {JSON_MAX_BYTES >> 20} MiB, not a file ies wrote")
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        msg = str(e) if str(e).startswith("cannot read") else f"cannot read {path}: {e}"
        raise ValueError(msg) from None


def _partial_summary(epochs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """What an incomplete run's rows say (used only when incomplete runs are asked for)."""
    last = epochs[-1]
    return {"final_test_acc": last["test_acc"], "final_test_loss": last["test_loss"],
            "best_test_acc_for_paper_comparison_only": max(r["test_acc"] for r in epochs),
            "backprop_saved": last["backprop_saved"], "compute_saved": last["compute_saved"],
            "wall_seconds": last["wall_seconds"], "epochs_run": len(epochs), "saving_note": ""}


def load_run_config(path: os.PathLike) -> Dict[str, Any]:
    """The resolved config saved in a run's ``config.json``."""
    meta = _read_json(Path(path))
    if not isinstance(meta, dict) or "config" not in meta:
        raise ValueError(f"{path} has no 'config' entry; it was not written by ies")
    return meta["config"]


def load_run(run_dir: os.PathLike) -> Dict[str, Any]:
    """Read a run folder: ``{"dir", "config", "environment", "label", "status", "summary", "epochs"}``.

    An incomplete run's ``summary`` is built from its rows so far (``"partial": True``).
    """
    d = Path(run_dir)
    if not (d / "config.json").exists():
        raise ValueError(f"{d} is not a run folder (no config.json); pass folders written by `ies train` or "
                         "`ies compare`")
    meta = _read_json(d / "config.json")
    status = RunFolder(d).status()
    try:
        epochs = read_csv(d / "metrics.csv") if (d / "metrics.csv").exists() else []
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {d / 'metrics.csv'}: {e}") from None
    if status["status"] == "complete":
        summary = _read_json(d / "summary.json")
    elif epochs:
        summary = {**_partial_summary(epochs), "partial": True}
    else:
        summary = None
    return {"dir": str(d), "config": meta["config"], "environment": meta.get("environment", {}),
            "label": meta.get("label"), "status": status["status"], "summary": summary, "epochs": epochs}


def find_runs(paths: Sequence[os.PathLike]) -> List[Path]:
    """Run folders in ``paths``: each is a run folder or contains run folders (searched recursively)."""
    out: List[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"{p} does not exist")
        if (p / "config.json").exists():
            out.append(p)
        else:
            out += sorted(q.parent for q in p.rglob("config.json"))
    if not out:
        raise ValueError(f"no run folders (with config.json) under {', '.join(map(str, paths))}")
    return out
