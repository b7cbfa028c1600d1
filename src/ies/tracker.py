"""Per-sample state of Instance-dependent Early Stopping.

The tracker holds a few ``(N,)`` tensors. ``record(indices, losses)`` is an index write;
``step()`` commits the epoch's losses to the history, applies the rule
(:mod:`ies.criterion`) to the whole set in a few tensor ops, decides who sits out the
next epoch and returns the epoch's statistics with a single host sync.

Example:
    >>> tracker = IES(len(train_set))                       # δ-mode, the paper's rule
    >>> tracker = IES(len(train_set), target_saving=0.4, total_epochs=30)   # or: say the saving
    >>> loader = DataLoader(IndexedDataset(train_set), sampler=tracker.sampler(), batch_size=64)
    >>> for epoch in range(epochs):
    ...     for idx, (x, y) in loader:
    ...         loss = tracker.record(idx, F.cross_entropy(model(x), y, reduction="none")).mean()
    ...         opt.zero_grad(); loss.backward(); opt.step()
    ...     stats = tracker.end_epoch(model, train_set, nn.CrossEntropyLoss(reduction="none"))
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import Tensor

from .accounting import MEASURED, Accounting, EpochStats
from .config import IESConfig
from .criterion import column_criterion, history_length
from .history import RingHistory
from .layout import count_dtype, doublings_of, epoch_dtype, interval_of, next_backoff, widen_if_needed
from .planning import choose_excluded, keep_at_random, loaded_kept
from .probing import probe_losses, staggered_due
from .records import EpochRecord, EpochRecords
from .state import STATE_VERSION, check_record, check_state, memory_check, misuse_messages

from .ieswarning import IESWarning  # re-exported: ies.tracker.IESWarning still works

__all__ = ["IES", "IESWarning"]


class IES:
    """Instance-dependent Early Stopping state for a training set of ``num_samples``.

    Args:
        num_samples: size of the training set (indices are ``0..N-1``).
        config: an :class:`~ies.IESConfig`; or give its fields as keywords
            (``threshold=1e-3``, ``target_saving=0.4, total_epochs=30``, ``probe_every=2``, ...).
            Keywords given beside a config replace its fields.
        device: where the per-sample state lives (the training device avoids copies).

    Which losses the rule compares: for a sample trained in epoch ``t``, the loss of its
    training forward pass (train mode, weights before that step); for a sample not trained
    (excluded, or active but left out by the loader), the loss of the forward-only probe
    pass after the epoch (eval mode). With ``probe_all=True`` every sample is probed and
    judged on that one measure.
    """

    def __init__(self, num_samples: int, config: Optional[IESConfig] = None, *,
                 device: Union[str, torch.device] = "cpu", **params: Any) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int (len of the training set), got {num_samples!r}")
        if config is None:
            config = IESConfig.from_dict(params)
        elif not isinstance(config, IESConfig):
            raise ValueError(f"config must be an IESConfig (give rule parameters by name, e.g. threshold=1e-3), "
                             f"got {config!r}")
        elif params:
            config = config.replace(**params)
        self.config = config
        self.num_samples = num_samples
        self.device = torch.device(device)
        memory_check(num_samples, config, self.device)
        n, h, dev = num_samples, history_length(config.order, config.window, config.m), self.device
        self._history = RingHistory(n, h, dev)
        self.count = torch.zeros(n, dtype=count_dtype(h), device=dev)  # losses committed per sample, up to H
        self._records = EpochRecords(n, dev)  # this epoch's losses and record flags
        self.excluded = torch.zeros(n, dtype=torch.bool, device=dev)  # left out of the current epoch
        edt = epoch_dtype(0, config.probe_max_interval)  # int16, widened to int32 before it could wrap (ies.layout)
        self.times_excluded = torch.zeros(n, dtype=edt, device=dev)
        self.times_reincluded = torch.zeros(n, dtype=edt, device=dev)
        self.first_mastered = torch.full((n,), -1, dtype=edt, device=dev)
        self.probe_doublings = torch.zeros(n, dtype=torch.uint8, device=dev)  # back-off interval: probe_every * 2**k
        self.probe_due = torch.zeros(n, dtype=edt, device=dev)  # back-off: epoch of the next probe
        # keep_fraction: chosen samples that train this epoch at weight 1/keep (None when the option is off)
        self.kept: Optional[Tensor] = torch.zeros(n, dtype=torch.bool, device=dev) if config.keep_fraction > 0 else None
        self.epoch = 0
        self.num_active = n
        self.books = Accounting(n, config.forward_cost)
        self.history_log: List[EpochStats] = []
        self._epoch_start: Optional[float] = None  # the epoch's clock starts at its first record
        self._probe_seconds = 0.0
        self._warned: set = set()

    # ----------------------------------------------------------------- recording
    def _write(self, indices: Tensor, losses: Tensor, kind: str) -> None:
        check_record(indices, losses)
        dev = self.device
        idx = indices if (indices.dtype == torch.int64 and indices.device == dev) else indices.to(dev, torch.int64, non_blocking=True)
        if losses.dtype != torch.float32 or losses.device != dev:
            val = losses.detach().to(dev, torch.float32, non_blocking=True)
        else:  # a copy: the caller may change its loss tensor in place before the records are written
            val = losses.detach().clone()
        if idx.shape[0] == 0:
            return
        if self._epoch_start is None:
            self._epoch_start = time.perf_counter()
        self._records.add(idx, val, kind)  # checked and written at the epoch's first read (see ies.records)

    pending = EpochRecord("pending", "This epoch's recorded losses ``(N,)`` float32 (NaN where none).")
    train_records = EpochRecord("train", "Training losses each sample got this epoch ``(N,)`` uint8: 0, 1, 2 (more).")
    probe_records = EpochRecord("probe", "Probe losses each sample got this epoch ``(N,)`` uint8: 0, 1, 2 (more).")

    def record(self, indices: Tensor, losses: Tensor, *, backpropagated: Optional[int] = None) -> Tensor:
        """Record the per-sample training losses of a batch; returns ``losses`` (weighted with ``keep_fraction``).

        ``indices`` LongTensor[B] are dataset indices, ``losses`` Tensor[B] the unreduced
        losses of the training forward pass. Reduce after recording, e.g.
        ``loss = tracker.record(idx, F.cross_entropy(out, y, reduction="none")).mean()``.
        ``backpropagated``: how many of them are backpropagated (default: all).
        With ``keep_fraction`` the returned losses of the kept chosen samples are multiplied by
        ``1/keep_fraction`` (the history records them unweighted); otherwise they are returned unchanged.
        """
        self._write(indices, losses, "train")
        if self.kept is not None:  # keep_fraction: kept chosen samples weigh 1/keep (unbiased gradient)
            extra = 1.0 / self.config.keep_fraction - 1.0
            losses = losses * (1.0 + extra * self.kept[indices.to(self.device)].to(losses.device, losses.dtype))
        b = losses.shape[0]
        counts = self.books.epoch
        counts["trained"] += b
        if backpropagated is None:
            counts["backprop"] += b
        else:  # forwarded in training, not all backpropagated
            counts["backprop"] += int(backpropagated)
            counts["forward_only"] += b - int(backpropagated)
        return losses

    def record_probe(self, indices: Tensor, losses: Tensor, *, seconds: float = 0.0) -> None:
        """Record losses measured by a forward-only probe pass (no backprop) that took ``seconds``."""
        self._write(indices, losses, "probe")
        self.books.add("probed", int(losses.shape[0]))
        self._probe_seconds += float(seconds)

    # ----------------------------------------------------------------- queries
    @property
    def active_mask(self) -> Tensor:
        """Bool ``(N,)``: samples eligible for backprop in the current epoch."""
        return ~self.excluded

    @property
    def pending_mask(self) -> Tensor:
        """Bool ``(N,)``: samples with a loss recorded this epoch (trained or probed)."""
        self._records.flush()
        return self._records.flags.bool()

    def active_indices(self) -> Tensor:
        return torch.nonzero(~self.excluded).flatten()

    def excluded_indices(self) -> Tensor:
        return torch.nonzero(self.excluded).flatten()

    @property
    def trained_in_epoch(self) -> int:
        """Samples recorded as trained so far in the current epoch (the sampler's misuse check reads it)."""
        return int(self.books.epoch["trained"])

    def sampler(self, **kwargs: Any) -> "torch.utils.data.Sampler[int]":
        """An :class:`~ies.ActiveSampler` over this tracker (``shuffle``, ``seed``, ``drop_last``, ...)."""
        from .sampler import ActiveSampler

        return ActiveSampler(self, **kwargs)

    def indices_to_probe(self) -> Tensor:
        """Indices the probe pass measures at the end of this epoch (call it after training).

        The excluded samples whose turn it is (every epoch, staggered every ``probe_every``,
        or by back-off), and every active sample that got no training loss this epoch
        (dropped by ``drop_last``, skipped by the loop), so each sample is judged every
        epoch it can be. With ``probe_all``: every sample.
        """
        c, e = self.config, self.epoch
        if c.probe_all:
            return torch.arange(self.num_samples, device=self.device)
        if c.probe_backoff:
            due = self.excluded & (self.probe_due <= e)
        else:
            due = self.excluded & staggered_due(torch.arange(self.num_samples, device=self.device), e, c.probe_every)
        self._records.flush()
        missed = ~self.excluded & ~self._records.has("train")
        return torch.nonzero((due | missed) & ~self._records.has("probe")).flatten()

    def criterion(self) -> Tensor:
        """Current criterion value per sample ``(N,)`` (``inf`` where not yet judged)."""
        c = self.config
        return column_criterion(self._history.columns(), self.count, order=c.order, window=c.window, m=c.m)

    @property
    def probe_interval(self) -> Tensor:
        """Back-off probe interval per sample ``(N,)`` int32 (kept as uint8 doublings of ``probe_every``)."""
        return interval_of(self.probe_doublings, self.config.probe_every, self.config.probe_max_interval)

    @probe_interval.setter
    def probe_interval(self, value: Tensor) -> None:
        self.probe_doublings = doublings_of(value.to(self.device), self.config.probe_every, self.config.probe_max_interval)

    # ----------------------------------------------------------------- history
    @property
    def history(self) -> Tensor:
        """Loss history ``(N, H)``, oldest first, newest last (a copy: NaN where not yet recorded)."""
        return self._history.as_tensor()

    @history.setter
    def history(self, value: Tensor) -> None:
        self._history.set(value)

    def _commit(self, got: Tensor, dense: Optional[bool] = None) -> None:
        self._history.commit(self.pending, got, dense=dense)

    # ----------------------------------------------------------------- epoch end
    def probe(self, model: torch.nn.Module, data: Any, loss_fn: Optional[Callable[..., Tensor]] = None,
              **kwargs: Any) -> int:
        """Run the forward-only probe pass over :meth:`indices_to_probe`; returns how many were probed.

        ``data``: the training set (map-style) or in-memory tensors ``(x, y)``; pass an
        un-augmented copy of the training set if training augments. See
        :func:`ies.probing.probe_losses` for ``kwargs`` (batch_size, device, forward, ...).
        """
        idx = self.indices_to_probe()
        if idx.numel() == 0:
            return 0
        t0 = self._clock()
        losses = probe_losses(model, data, idx, loss_fn, **kwargs)
        self.record_probe(idx, losses, seconds=self._clock() - t0)
        return int(idx.numel())

    def _clock(self) -> float:
        if self.device.type == "cuda":  # two syncs per epoch, so the probe's time is its own
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def end_epoch(self, model: torch.nn.Module, data: Any, loss_fn: Optional[Callable[..., Tensor]] = None,
                  **kwargs: Any) -> EpochStats:
        """Probe pass, then :meth:`step`. The usual last line of an epoch."""
        self.probe(model, data, loss_fn, **kwargs)
        return self.step()

    def _sync_pending(self) -> None:
        """Hook for distributed training: make the epoch's records equal on all ranks."""

    def _decide(self, values: Tensor) -> Tensor:
        """Bool ``(N,)``: who the rule would exclude next epoch, before annealing and keep_fraction."""
        return choose_excluded(self.config, values, self.books, self.num_active, self.epoch)

    def _keep_some(self, chosen: Tensor) -> Tensor:
        """``keep_fraction``: who of the chosen sits out; the rest train at loss weight 1/keep (:attr:`kept`)."""
        self.kept = keep_at_random(chosen, self.config.keep_fraction, self.config.seed + self.epoch + 1)
        return chosen & ~self.kept

    def step(self) -> EpochStats:
        """Commit this epoch's losses, decide next epoch's excluded set, return the statistics."""
        self._records.flush()
        self._sync_pending()
        c = self.config
        if bool(self._records.bad):
            raise ValueError("an earlier record() call had an index out of range or a duplicate index; "
                             f"indices must be unique per batch and in 0..{self.num_samples - 1}")
        widen_if_needed(self)
        rec = self._records
        got, probed = rec.flags.bool(), rec.has("probe")
        # Samples that got a loss shift it in; others keep their history unchanged (paper's code).
        self._history.commit(rec.pending, got)
        self.count.add_(got).clamp_(max=self._history.ring.shape[0])  # saturates at H: only count >= H matters
        was = self.excluded
        annealing = c.anneal_start is not None and self.epoch + 1 >= c.anneal_start
        if c.removes:  # with no removal the criterion is not needed now (criterion() computes it on demand)
            mastered = self._decide(self.criterion())
            nxt = mastered if not annealing else torch.zeros_like(mastered)
            if c.keep_fraction > 0:
                nxt = self._keep_some(nxt)
        else:  # (a state saved with removal and loaded with threshold 0 brings everyone back)
            mastered = nxt = torch.zeros_like(was)
        t = rec.tally(was, mastered, nxt)  # the epoch's counts: one bincount, the one host sync of the epoch
        if t["excluded"] or t["next"]:  # with nobody excluded now or next, every counter update is a no-op
            self._update_counters(was, nxt, probed)
        n_excl, n_next, n_both, n_while = t["excluded"], t["next"], t["both"], t["while_excluded"]
        stats = self._close(nxt, n_excl, t["mastered"], n_next - n_both, n_excl - n_both, n_next, t["nonfinite"],
                            t["twice"], n_while, self.num_samples - n_excl - t["trained"] + n_while, t["got"])
        rec.reset()
        return stats

    def _update_counters(self, was: Tensor, nxt: Tensor, probed: Tensor) -> None:
        """Per-sample counters and the back-off schedule, from this epoch's and the next's excluded sets."""
        c = self.config
        if c.probe_backoff:
            self.probe_doublings, self.probe_due = next_backoff(  # as ies.probing.backoff_next, on this layout
                self.probe_doublings, self.probe_due, probed & was & nxt, nxt & ~was, self.epoch,
                first=c.probe_every, cap=c.probe_max_interval)
        self.times_excluded.add_(nxt)
        self.times_reincluded.add_(was & ~nxt)
        fm = self.first_mastered  # where nxt and never excluded (-1): epoch + 1; arithmetic, no slow masked_fill
        first = (fm >> (fm.element_size() * 8 - 1)).neg_() & nxt.to(fm.dtype)
        fm += first * (self.epoch + 1 - fm)

    def _close(self, nxt: Tensor, n_excl: int, n_mast: int, n_new: int, n_back: int, n_next: int, n_nonfinite: int,
               n_twice: int, n_while_excl: int, n_unrec: int, n_got: int) -> EpochStats:
        now = time.perf_counter()
        epoch_s = now - self._epoch_start if self._epoch_start is not None else 0.0
        probe_s = min(self._probe_seconds, epoch_s)
        trained = self.books.epoch["trained"]
        for key, msg in misuse_messages(self.epoch, self.num_samples - n_excl, trained, n_twice, n_while_excl,
                                        n_nonfinite, n_got):
            self._warn(key, msg)
        books = self.books.close(excluded=n_excl, train_seconds=epoch_s - probe_s, probe_seconds=probe_s)
        kept = {k: books[k] for k in ("trained", "probed", "backprop_saved", "compute_saved", *MEASURED)}
        stats = EpochStats(
            epoch=self.epoch, num_samples=self.num_samples, active=self.num_samples - n_excl, excluded=n_excl,
            mastered=n_mast, newly_excluded=n_new, reincluded=n_back, next_active=self.num_samples - n_next,
            backpropagated=books["backprop"], unrecorded=n_unrec, trained_while_excluded=n_while_excl,
            nonfinite=n_nonfinite, **kept)
        self.excluded = nxt
        self.num_active = self.num_samples - n_next
        self.epoch += 1
        self.history_log.append(stats)
        self._epoch_start = None  # the next epoch's clock starts at its first record, after any evaluation
        self._probe_seconds = 0.0
        return stats

    def _warn(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, IESWarning, stacklevel=4)  # the caller of step()

    # ----------------------------------------------------------------- export & checkpoints
    def per_sample(self) -> Dict[str, Tensor]:
        """Per-sample counters on CPU: times excluded, times re-included, first epoch excluded (-1: never)."""
        return {
            "times_excluded": self.times_excluded.cpu(),
            "times_reincluded": self.times_reincluded.cpu(),
            "first_mastered_epoch": self.first_mastered.cpu(),
            "excluded_now": self.excluded.cpu(),
            "criterion": self.criterion().cpu(),
        }

    def export(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`per_sample` to a ``.npz`` file (needs numpy)."""
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy ships with the cli extra
            raise ImportError("export() writes .npz and needs numpy: pip install numpy") from None
        np.savez(path, **{k: v.numpy() for k, v in self.per_sample().items()})

    _TENSORS = ("history", "count", "pending", "train_records", "probe_records", "excluded", "times_excluded",
                "times_reincluded", "first_mastered", "probe_interval", "probe_due")

    def state_dict(self) -> Dict[str, Any]:
        """Plain tensors, ints and dicts; restore with :meth:`load_state_dict` for an exact resume."""
        sd: Dict[str, Any] = {k: getattr(self, k).detach().cpu().clone() for k in self._TENSORS}
        sd.update(version=STATE_VERSION, num_samples=self.num_samples, epoch=self.epoch,
                  config=self.config.to_dict(), accounting=self.books.state_dict(),
                  history_log=[s.as_dict() for s in self.history_log])
        if self.kept is not None:
            sd["kept"] = self.kept.detach().cpu().clone()
        return sd

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore state saved by :meth:`state_dict`: all or nothing.

        Everything is checked before anything is assigned (keys, version, sizes, dtypes,
        the accounting); a state whose rule shape (order, window, m) differs is refused;
        other rule settings that differ are named in a warning and the constructor's win.
        """
        checked = check_state(self, state)
        for k in self._TENSORS:
            setattr(self, k, checked[k].to(self.device).clone())
        self.epoch = checked["epoch"]
        self.books.load_state_dict(state["accounting"])
        self.history_log = [EpochStats.from_dict(d) for d in state["history_log"]]
        self.num_active = int((~self.excluded).sum())
        if self.kept is not None:
            self.kept = loaded_kept(state.get("kept"), self.num_samples).to(self.device)
        self._epoch_start = None
        if checked["differs"]:
            warnings.warn(f"IES state was saved with other rule settings {checked['differs']} (saved, current); "
                          "the current settings are used from now on", IESWarning, stacklevel=2)

    def __repr__(self) -> str:
        c = self.config
        rule = f"threshold={c.threshold}" if c.mode == "delta" else f"target_saving={c.target_saving}"
        return (f"IES(num_samples={self.num_samples}, {rule}, order={c.order}, window={c.window}, m={c.m}, "
                f"epoch={self.epoch}, active={self.num_active})")
