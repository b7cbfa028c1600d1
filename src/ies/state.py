"""Checks that keep the tracker's state whole: record arguments, saved states, memory.

Each function only inspects and raises ``ValueError`` with what is wrong and the fix; the
tracker assigns nothing until its check has passed, so a bad input changes nothing.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

import torch
from torch import Tensor

from .accounting import Accounting, EpochStats
from .config import IESConfig
from .criterion import history_length
from .layout import bytes_per_sample, saved_dtypes, to_current

if TYPE_CHECKING:  # pragma: no cover
    from .tracker import IES

__all__ = ["STATE_VERSION", "check_record", "check_state", "memory_check", "bytes_per_sample", "misuse_messages"]

STATE_VERSION = 3  # 3: smaller counter dtypes (ies.layout); states of version 2 are still read

_KEYS = ("history", "count", "pending", "train_records", "probe_records", "excluded", "times_excluded",
         "times_reincluded", "first_mastered", "probe_interval", "probe_due")  # the history is (N, H), the rest (N,)


def check_record(indices: Tensor, losses: Tensor) -> None:
    """Shape checks that need no host sync; raise ``ValueError`` with the fix."""
    if not isinstance(losses, Tensor) or not isinstance(indices, Tensor):
        raise ValueError("record(indices, losses) takes two tensors: indices LongTensor[B], losses Tensor[B]")
    if losses.dim() == 0:
        raise ValueError(
            "losses is a scalar: IES needs one loss per sample. Compute the loss with reduction='none' "
            "(e.g. F.cross_entropy(out, y, reduction='none')) and reduce it yourself after record()."
        )
    if losses.dim() != 1:
        raise ValueError(f"losses must be 1-D (one per sample), got shape {tuple(losses.shape)}; reduce the extra dims first")
    if indices.dim() != 1:
        raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
    if indices.shape[0] != losses.shape[0]:
        raise ValueError(
            f"indices and losses differ in length ({indices.shape[0]} vs {losses.shape[0]}): pass the dataset "
            "indices of exactly the samples in this batch (wrap the dataset in IndexedDataset)"
        )
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.is_complex():
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    if not losses.dtype.is_floating_point:
        raise ValueError(f"losses must be a floating tensor, got {losses.dtype}")


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62


def memory_check(num_samples: int, config: IESConfig, device: torch.device) -> None:
    """Refuse a tracker whose state would not fit in the device's free memory, with the figure."""
    if device.type not in ("cpu", "cuda"):
        return
    need = num_samples * bytes_per_sample(config)
    free = _available_bytes(device)
    if need > free:
        raise ValueError(
            f"an IES tracker for {num_samples:,} samples needs {need / 2**30:.1f} GiB ({bytes_per_sample(config)} bytes "
            f"per sample) but {device} has {free / 2**30:.1f} GiB free; check num_samples (the training set's length), "
            "or use a smaller history (order, window, m)")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_state(tracker: "IES", state: Any) -> Dict[str, Any]:
    """Validate a saved state against ``tracker``; return the converted values to assign.

    Returns ``{tensor name: tensor, "epoch": int, "differs": {field: (saved, current)}}``.
    """
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from IES.state_dict(), got {type(state).__name__}")
    version = state.get("version")
    if version not in (2, STATE_VERSION) or isinstance(version, bool):
        raise ValueError(f"IES state version {version!r} is not {STATE_VERSION} (or 2, read too): it was saved by "
                         "another version of ies; resume with the version that saved it, or start the IES state afresh")
    missing = [k for k in (*_KEYS, "num_samples", "epoch", "config", "accounting", "history_log") if k not in state]
    if missing:
        raise ValueError(f"IES state is missing keys {missing}; was it saved by IES.state_dict()?")
    if not _is_int(state["num_samples"]) or state["num_samples"] != tracker.num_samples:
        raise ValueError(
            f"IES state was saved for a dataset of {state['num_samples']!r} samples, this tracker has "
            f"{tracker.num_samples}; resume with the same training set (same size and order)")
    if not _is_int(state["epoch"]) or state["epoch"] < 0:
        raise ValueError(f"IES state epoch must be an int >= 0, got {state['epoch']!r}")
    saved = IESConfig.from_dict(state["config"]) if isinstance(state["config"], dict) else None
    if saved is None:
        raise ValueError("IES state 'config' must be the dict saved by state_dict()")
    cur = tracker.config
    if saved.shape != cur.shape:
        raise ValueError(f"IES state has a different rule shape (saved {saved.shape}, current {cur.shape}); "
                         "build the tracker with the saved order, window and m")
    differs = {k: (v, getattr(cur, k)) for k, v in saved.to_dict().items() if v != getattr(cur, k)}
    out: Dict[str, Any] = {"epoch": int(state["epoch"]), "differs": differs}
    n, h = tracker.num_samples, history_length(cur.order, cur.window, cur.m)
    for k, dtypes in saved_dtypes(version, h).items():
        v = state[k]
        want = (n, h) if k == "history" else (n,)
        if not isinstance(v, Tensor) or tuple(v.shape) != want or v.dtype not in dtypes:
            got = f"{type(v).__name__} {tuple(v.shape)} {v.dtype}" if isinstance(v, Tensor) else type(v).__name__
            kinds = " or ".join(str(d) for d in dtypes)
            raise ValueError(f"IES state entry {k!r} must be a {kinds} tensor of shape {want} (state version "
                             f"{version}), got {got}")
        out[k] = v
    Accounting.check_state(state["accounting"])
    log = state["history_log"]
    names = {f.name for f in fields(EpochStats)}
    if not isinstance(log, list) or any(not isinstance(d, dict) or set(d) != names for d in log):
        raise ValueError("IES state 'history_log' must be the list of EpochStats dicts saved by state_dict()")
    _check_values(out, state["accounting"], len(log))
    out.update(to_current({k: out[k] for k in _KEYS}, h, out["epoch"], cur.probe_max_interval))
    return out


# smallest value each counter may hold: counts >= 0, first_mastered -1 (never), intervals >= 1
_LOWEST = {"count": 0, "train_records": 0, "probe_records": 0, "times_excluded": 0, "times_reincluded": 0,
           "first_mastered": -1, "probe_interval": 1, "probe_due": 0}


def _check_values(out: Dict[str, Any], books: Dict[str, Any], n_log: int) -> None:
    """Values a real run cannot produce (shapes and dtypes are already right); ``ValueError`` naming the field."""
    for k, low in _LOWEST.items():
        if out[k].numel() and int(out[k].min()) < low:
            raise ValueError(f"IES state entry {k!r} holds {int(out[k].min())}, below its minimum {low}; the state "
                             "was edited or damaged, save it again with state_dict()")
    last = out["history"][:, -1][out["excluded"]] if out["history"].shape[1] else out["history"][:0, 0]
    if not bool(torch.isfinite(last).all()):  # the rule excludes a sample only after finite losses
        raise ValueError("IES state entry 'history' has non-finite newest losses for excluded samples; the rule "
                         "never excludes those, so the state was edited or damaged")
    epoch = out["epoch"]
    for part in ("epoch", "total", "seconds"):
        bad = {k: v for k, v in books[part].items() if not math.isfinite(v)}
        if bad:
            raise ValueError(f"IES state accounting {part!r} has non-finite entries {bad}; save it again with "
                             "state_dict()")
    if books["total"]["epochs"] != epoch or n_log != epoch:
        raise ValueError(f"IES state accounting total.epochs ({books['total']['epochs']}) and history_log "
                         f"({n_log} epochs) must both equal epoch ({epoch}); the state was edited or damaged")
    for part in ("epoch", "total"):
        if books[part]["backprop"] > books[part]["trained"] + 1e-6:
            raise ValueError(f"IES state accounting {part!r} has backprop {books[part]['backprop']} > trained "
                             f"{books[part]['trained']}; a sample backpropagates at most once per training record")


def misuse_messages(epoch: int, active: int, trained: float, n_twice: int, n_while_excl: int, n_nonfinite: int,
                    n_got: int) -> List[Tuple[str, str]]:
    """``(kind, message)`` for each misuse an epoch's counts reveal; each message names the fix."""
    out = []
    if active > 0 and trained == 0:
        out.append(("nothing-trained", (
            f"epoch {epoch}: {active} samples were active but no training loss was recorded. Either "
            "end_epoch()/step() was called twice with no training in between (call it once per epoch), or the "
            f"DataLoader yielded no batch: with drop_last=True and batch_size > {active} it yields none; use "
            "drop_last=False with tracker.sampler()")))
    if n_while_excl:
        out.append(("while-excluded", (
            f"epoch {epoch}: {n_while_excl} samples were trained while excluded (counted as trained, so the "
            "saving reported is what happened). Likely cause: a DataLoader that does not use tracker.sampler(); "
            "build it as DataLoader(IndexedDataset(ds), sampler=tracker.sampler(), ...)")))
    if n_twice:
        out.append(("twice", (
            f"epoch {epoch}: {n_twice} samples were recorded more than once in one epoch (the last loss was "
            "kept). Call end_epoch() once at the end of every pass over tracker.sampler(), and record each sample "
            "once per epoch")))
    if n_got and n_nonfinite * 2 > n_got:
        out.append(("nonfinite", (
            f"epoch {epoch}: {n_nonfinite} of {n_got} recorded losses are not finite: training has likely "
            "diverged (lower the learning rate). Samples with non-finite losses are kept in training")))
    return out
