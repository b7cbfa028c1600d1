"""Run folders: naming, exclusive creation, status markers, per-epoch files and checkpoints.

A run folder holds ``config.json`` (resolved config + environment, written first),
``status.json`` (``running`` / ``interrupted`` / ``failed`` / ``complete``, with the epochs
done), ``metrics.csv`` (rewritten atomically after every epoch), ``checkpoint.pt`` (while
the run is not complete) and, once complete, ``summary.json`` and ``per_sample.npz``.
Folders are created with ``os.mkdir`` (never ``exist_ok``), so two runs never share one.
"""

from __future__ import annotations

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

from .tables import read_csv, write_csv, write_json

__all__ = ["RunFolder", "environment", "safe_name", "run_dir_name", "run_label", "prepare_out", "make_dir",
           "save_run", "load_run", "load_run_config", "find_runs", "RUN_STATUSES", "CHECKPOINT"]

RUN_STATUSES = ("running", "interrupted", "failed", "complete")
CHECKPOINT = "checkpoint.pt"
_OURS = ("config.json", "status.json", "runs", "summary.md", "summary.json")  # what marks an ies output folder


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
    raise ValueError(f"could not create a fresh folder {root / stem}-N; pass --out")


def prepare_out(out: Optional[os.PathLike], command: str, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Validate and create the output folder before any training.

    No ``out``: a fresh ``runs/<command>-<time>[-N]``. An existing non-empty folder needs
    ``resume`` (continue what is in it) or ``overwrite`` (delete it first; only folders that
    ies wrote). ``ValueError`` names the problem and the flag that fixes it.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pass one")
    if out is None:
        if resume:
            raise ValueError("--resume needs the folder to continue: pass --out FOLDER")
        return _default_out(command)
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file, not a folder; give a folder path")
    if not p.exists():
        if resume:
            raise ValueError(f"--resume: {p} does not exist, so there is nothing to continue; drop --resume")
        try:
            return make_dir(p)
        except FileExistsError:
            raise ValueError(f"--out {p} was created by another process just now; give another folder") from None
    if not any(p.iterdir()) or resume:
        return p
    if not overwrite:
        raise ValueError(f"--out {p} is not empty; pass --resume to continue the runs in it, "
                         "or --overwrite to delete it and start again")
    if not any((p / name).exists() for name in _OURS):
        raise ValueError(f"--overwrite: {p} does not look like an ies output folder (no config.json, runs/ or "
                         "summary.md); refusing to delete it, choose another --out")
    shutil.rmtree(p)
    return make_dir(p)


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


class RunFolder:
    """One run's folder: ``start`` it, save each epoch, then ``complete``/``fail``/``interrupt`` it."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = Path(path)

    def status(self) -> Dict[str, Any]:
        """``{"status": ..., "epochs_done": ...}``; folders from before status files count as complete."""
        f = self.path / "status.json"
        if f.exists():
            return _read_json(f)
        done = (self.path / "summary.json").exists()
        return {"status": "complete" if done else "unknown", "epochs_done": None}

    def start(self, config: Dict[str, Any], extra: Optional[Dict[str, Any]] = None, *, claim: bool = True) -> None:
        """Write ``config.json`` and mark the run running.

        ``claim``: the folder is created with ``os.mkdir`` if missing, and ``config.json`` with
        ``O_EXCL``, so a second run started into the same folder fails here (``FileExistsError``).
        """
        if not self.path.exists():
            make_dir(self.path)
        if claim:
            os.close(os.open(self.path / "config.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        write_json(self.path / "config.json", {"config": config, "environment": environment(), **(extra or {})})
        self._mark("running", 0)

    def _mark(self, status: str, epochs_done: Optional[int], error: Optional[str] = None) -> None:
        write_json(self.path / "status.json", {"status": status, "epochs_done": epochs_done, "error": error,
                                               "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def save_epoch(self, state: Dict[str, Any]) -> None:
        """After each epoch: ``metrics.csv`` and ``checkpoint.pt`` (atomically), status with the epoch count."""
        import torch

        with _sigint_deferred():
            write_csv(self.path / "metrics.csv", state["rows"])
            tmp = self.path / f".{CHECKPOINT}.{os.getpid()}.tmp"
            torch.save(state, tmp)
            os.replace(tmp, self.path / CHECKPOINT)
            self._mark("running", len(state["rows"]))

    def checkpoint(self) -> Optional[Dict[str, Any]]:
        """The last checkpoint, or None if the run never finished an epoch."""
        import torch

        f = self.path / CHECKPOINT
        if not f.exists():
            return None
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: say which, and how to recover
            raise ValueError(f"cannot read checkpoint {f} ({e}); delete the run folder and run it again") from None

    def complete(self, result: Any) -> None:
        """Final files; the checkpoint is removed (a complete run is never resumed)."""
        write_csv(self.path / "metrics.csv", result.epochs)
        write_json(self.path / "summary.json", result.summary)
        if result.per_sample:
            import numpy as np

            np.savez(self.path / "per_sample.npz", **{k: v.numpy() for k, v in result.per_sample.items()})
        self._mark("complete", len(result.epochs))
        (self.path / CHECKPOINT).unlink(missing_ok=True)

    def fail(self, error: BaseException, *, interrupted: bool = False) -> None:
        done = self.status().get("epochs_done")
        self._mark("interrupted" if interrupted else "failed", done, None if interrupted else
                   f"{type(error).__name__}: {error}")


def save_run(result: Any, run_dir: os.PathLike, *, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write a finished :class:`~ies.experiments.engine.RunResult` into a new folder (or an empty one)."""
    folder = RunFolder(run_dir)
    folder.start(result.config, extra)
    folder.complete(result)
    return folder.path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


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
