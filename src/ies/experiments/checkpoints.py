"""A run's checkpoint on disk: written durably with its SHA-256, verified and value-checked before a resume.

The digest of ``checkpoint.pt``'s bytes is stored beside it (``checkpoint.pt.sha256``) and in
``status.json``. They are written in the order sidecar -> checkpoint -> status, so after a
kill at any point the checkpoint on disk matches one of the two; a checkpoint matching
neither was changed after it was written (a flipped bit, a truncation, an edit) and is
refused. Then the values are checked (:func:`check_values`): a checkpoint that passes its
checksum can still have been written by hand.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional

from .runlock import RunFolderError, atomic_write_bytes

__all__ = ["SIDECAR", "file_sha256", "write_checkpoint", "verify_checksum", "check_values"]

SIDECAR = ".sha256"  # suffix of the digest file beside the checkpoint


def file_sha256(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint(state: Dict[str, Any], path: Path) -> str:
    """``torch.save`` to a tmp file, fsync, sidecar digest, rename; returns the digest (for status.json)."""
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(state, f)
            except OSError as e:  # name the checkpoint, not the tmp file (or nothing)
                raise OSError(e.errno or errno.EIO, e.strerror or str(e), str(path)) from None
            except RuntimeError as e:  # torch's stream writer says "failed writing file", not why or which
                raise OSError(errno.EIO, f"writing failed ({str(e).splitlines()[0]}); "
                              "is the disk full?", str(path)) from None
            f.flush()
            os.fsync(f.fileno())
        digest = file_sha256(tmp)
        atomic_write_bytes(path.with_name(path.name + SIDECAR), (digest + "\n").encode(), sync=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def verify_checksum(path: Path, status_digest: Optional[str]) -> None:
    """Refuse ``path`` unless its bytes match the sidecar digest or ``status_digest`` (when either exists)."""
    side = path.with_name(path.name + SIDECAR)
    known = {status_digest} if isinstance(status_digest, str) else set()
    if side.exists():
        try:
            known.add(side.read_text()[:64])
        except OSError as e:
            raise RunFolderError(f"cannot read {side}: {e.strerror}") from None
    if not known:
        return  # written before checksums existed
    try:
        got = file_sha256(path)
    except OSError as e:
        raise RunFolderError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if got not in known:
        raise RunFolderError(
            f"checkpoint {path} does not match its SHA-256 (file {got[:12]}..., recorded "
            f"{', '.join(sorted(k[:12] + '...' for k in known))}): it changed after it was written (disk fault, "
            "truncation or an edit); start the run again with --overwrite")


def _finite_tensors(d: Any, where: str, path: Path) -> None:
    import torch

    for k, v in (d.items() if isinstance(d, dict) else ()):
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise RunFolderError(f"checkpoint {path}: field {where}[{k!r}] holds NaN or infinite values; the file is "
                                 "damaged, start the run again with --overwrite")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _books(state: Dict[str, Any], path: Path, done: int) -> None:
    policy = state.get("policy")
    if not isinstance(policy, dict):
        raise RunFolderError(f"checkpoint {path}: field 'policy' is not the dict the run saved")
    if policy.get("epoch") != done:
        raise RunFolderError(f"checkpoint {path}: field policy.epoch is {policy.get('epoch')!r} but epochs_done is "
                             f"{done}; the file was edited, start the run again with --overwrite")
    total = (policy.get("books") or {}).get("total") if isinstance(policy.get("books"), dict) else None
    if not isinstance(total, dict) or not all(_num(v) and v >= 0 for v in total.values()):
        raise RunFolderError(f"checkpoint {path}: field policy.books.total must hold finite counts >= 0, got {total!r}")
    if total.get("epochs") != done:
        raise RunFolderError(f"checkpoint {path}: field policy.books.total.epochs is {total.get('epochs')!r} but "
                             f"epochs_done is {done}; the accounting does not fit the epochs run")


def check_values(state: Any, path: Path, config: Dict[str, Any]) -> None:
    """One-line :class:`RunFolderError` naming the field of a checkpoint whose values cannot be a real run's."""
    if not isinstance(state, dict):
        raise RunFolderError(f"checkpoint {path} holds a {type(state).__name__}, not a run's checkpoint dict")
    missing = [k for k in ("epochs_done", "rows", "model", "optimizer", "base_lrs", "policy") if k not in state]
    if missing:
        raise RunFolderError(f"checkpoint {path} lacks field(s) {missing}; start the run again with --overwrite")
    saved = state.get("config")
    if saved != config:
        diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k)) if isinstance(saved, dict) \
            else ["config"]
        raise RunFolderError(f"checkpoint {path}: field config differs from the run's config.json in "
                             f"{', '.join(diff)}; config.json was edited: restore it, or start again with --overwrite")
    done, rows = state["epochs_done"], state["rows"]
    epochs = config.get("epochs")
    if not isinstance(done, int) or isinstance(done, bool) or done < 1 or (isinstance(epochs, int) and done > epochs):
        raise RunFolderError(f"checkpoint {path}: field epochs_done must be an int in 1..{epochs}, got {done!r}")
    if not isinstance(rows, list) or len(rows) != done:
        n = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise RunFolderError(f"checkpoint {path}: field rows has {n} rows but epochs_done is {done}; the file was "
                             "cut or edited, start the run again with --overwrite")
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict) or r.get("epoch") != i + 1]
    if bad:
        raise RunFolderError(f"checkpoint {path}: field rows[{bad[0]}].epoch is not {bad[0] + 1}; the rows are "
                             "out of order or edited")
    lrs = state["base_lrs"]
    if not isinstance(lrs, list) or not all(_num(x) and x == config.get("lr") for x in lrs):
        raise RunFolderError(f"checkpoint {path}: field base_lrs is {lrs!r} but the run's lr is {config.get('lr')!r}; "
                             "the file was edited, start the run again with --overwrite")
    _finite_tensors(state["model"], "model", path)
    _books(state, path, done)
    for k in ("train_seconds", "probe_seconds"):
        if k in state and not (_num(state[k]) and state[k] >= 0):
            raise RunFolderError(f"checkpoint {path}: field {k} must be a finite number >= 0, got {state[k]!r}")
