"""Per-sample state of Instance-dependent Early Stopping.

The tracker holds a few ``(N, ...)`` tensors. ``record(indices, losses)`` is an index
write; ``step()`` commits the epoch's losses to the history, applies the mastery rule
to the whole set in a few tensor ops, decides who sits out the next epoch and returns
the epoch's statistics with a single host sync.

Example:
    >>> ies = InstanceEarlyStopping(len(train_set))
    >>> for epoch in range(epochs):
    ...     for idx, (x, y) in loader:            # loader uses ActiveSampler(ies)
    ...         loss = ies.record(idx, F.cross_entropy(model(x), y, reduction="none")).mean()
    ...         ...
    ...     stats = ies.end_epoch(model, train_set, nn.CrossEntropyLoss(reduction="none"))
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor

from .criterion import history_length, masked_score, mastered_columns, validate_rule

__all__ = ["IESConfig", "EpochStats", "InstanceEarlyStopping", "IES", "check_record"]

_STATE_VERSION = 1


@dataclass
class IESConfig:
    """Parameters of the IES rule. Defaults are the paper's."""

    threshold: float = 1e-3  # delta: the paper's default; 0 disables removal
    order: int = 2  # k: second-order difference, the paper's choice (Figure 5 compares 0..3)
    window: int = 3  # w: the paper code's moving_average_rate
    m: int = 1  # how many of the last moving averages are summed (paper code: k=1)
    score_every: int = 1  # r: score excluded samples every r epochs (Appendix F uses 5)
    anneal_fraction: float = 0.0  # train on all data for this last fraction of epochs (ImageNet: 0.1)
    total_epochs: Optional[int] = None  # needed for annealing
    score_all: bool = False  # scoring pass measures every sample, not only the excluded
    forward_cost: float = 1.0 / 3.0  # cost of a forward pass relative to forward + backward

    def validate(self) -> "IESConfig":
        validate_rule(self.threshold, self.order, self.window, self.m)
        if not isinstance(self.score_every, int) or self.score_every < 1:
            raise ValueError(f"score_every must be an int >= 1 (1 scores every epoch), got {self.score_every!r}")
        if not 0.0 <= float(self.anneal_fraction) < 1.0:
            raise ValueError(f"anneal_fraction must be in [0, 1), got {self.anneal_fraction!r}")
        if self.anneal_fraction > 0 and (self.total_epochs is None or self.total_epochs < 1):
            raise ValueError("anneal_fraction > 0 needs total_epochs (the planned number of epochs)")
        if self.total_epochs is not None and (not isinstance(self.total_epochs, int) or self.total_epochs < 1):
            raise ValueError(f"total_epochs must be a positive int or None, got {self.total_epochs!r}")
        if not 0.0 < float(self.forward_cost) <= 1.0:
            raise ValueError(f"forward_cost must be in (0, 1] (a forward is ~1/3 of forward+backward), got {self.forward_cost!r}")
        return self

    @property
    def anneal_start(self) -> Optional[int]:
        """First epoch (0-based) of full-data annealing, or None."""
        if self.anneal_fraction <= 0 or self.total_epochs is None:
            return None
        return self.total_epochs - max(1, int(round(self.anneal_fraction * self.total_epochs)))


@dataclass
class EpochStats:
    """What one epoch did, as plain numbers (returned by ``step``)."""

    epoch: int  # the epoch these numbers describe (0-based)
    num_samples: int
    active: int  # samples eligible for backprop this epoch
    excluded: int  # samples left out of backprop this epoch
    mastered: int  # samples meeting the criterion after this epoch
    newly_excluded: int  # active this epoch, excluded next epoch
    reincluded: int  # excluded this epoch, active next epoch
    next_active: int  # samples eligible for backprop next epoch
    trained_forward: int  # samples forwarded by training this epoch
    backpropagated: int  # samples whose loss was backpropagated this epoch
    scored_forward: int  # samples forwarded by the scoring pass this epoch
    nonfinite: int  # non-finite losses recorded this epoch
    backprop_saved: float  # cumulative: excluded sample-epochs / (N * epochs)
    compute_saved: float  # cumulative, counting the scoring pass at forward_cost

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def check_record(indices: Tensor, losses: Tensor, num_samples: int) -> None:
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


class InstanceEarlyStopping:
    """Instance-dependent Early Stopping state for a training set of ``num_samples``.

    Args:
        num_samples: size of the training set (indices are ``0..N-1``).
        threshold, order, window, m, score_every, anneal_fraction, total_epochs,
        score_all, forward_cost: see :class:`IESConfig`.
        device: where the per-sample state lives (the training device avoids copies).

    Which losses the rule compares: for a sample trained in epoch ``t``, the loss of its
    training forward pass (train mode, weights before that step); for an excluded sample,
    the loss of the forward-only scoring pass after the epoch (eval mode by default).
    With ``score_all=True`` the scoring pass measures every sample and its losses replace
    the training losses, so all samples are judged on one consistent measure.
    """

    def __init__(
        self,
        num_samples: int,
        threshold: float = 1e-3,
        order: int = 2,
        window: int = 3,
        m: int = 1,
        *,
        score_every: int = 1,
        anneal_fraction: float = 0.0,
        total_epochs: Optional[int] = None,
        score_all: bool = False,
        forward_cost: float = 1.0 / 3.0,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int (len of the training set), got {num_samples!r}")
        self.config = IESConfig(
            threshold=threshold, order=order, window=window, m=m, score_every=score_every,
            anneal_fraction=anneal_fraction, total_epochs=total_epochs, score_all=score_all,
            forward_cost=forward_cost,
        ).validate()
        self.num_samples = num_samples
        self.device = torch.device(device)
        n, h, dev = num_samples, history_length(order, window, m), self.device
        # The history as a ring of H contiguous columns: row (head + j) % H holds each
        # sample's j-th oldest loss; see the ``history`` property for the (N, H) view.
        self._ring = torch.full((h, n), float("nan"), device=dev)
        self._head = 0
        self.count = torch.zeros(n, dtype=torch.int64, device=dev)  # (N,) losses recorded in total
        self.pending = torch.full((n,), float("nan"), device=dev)  # (N,) this epoch's loss
        self.pending_mask = torch.zeros(n, dtype=torch.bool, device=dev)  # (N,) has a loss this epoch
        self.excluded = torch.zeros(n, dtype=torch.bool, device=dev)  # (N,) left out this epoch
        self.times_excluded = torch.zeros(n, dtype=torch.int32, device=dev)
        self.times_reincluded = torch.zeros(n, dtype=torch.int32, device=dev)
        self.first_mastered = torch.full((n,), -1, dtype=torch.int32, device=dev)  # epoch first excluded after
        self.epoch = 0  # the epoch being trained (0-based); step() advances it
        self.num_active = n  # host copy of (~excluded).sum(), refreshed at step()
        # Per-epoch host counters (batch sizes are shape info: no sync needed).
        self._trained = 0
        self._backprop = 0
        self._scored = 0
        self._bad_record = torch.zeros((), dtype=torch.bool, device=dev)  # deferred checks off-CPU
        self._stamp = torch.zeros(n, dtype=torch.int32, device=dev)  # scratch: duplicate-index check
        self._aranges: Dict[int, Tensor] = {}
        self.totals = {"excluded": 0, "trained": 0, "backprop": 0, "scored": 0, "epochs": 0, "nonfinite": 0}
        self.history_log: list = []  # EpochStats of each step, for reports

    # ----------------------------------------------------------------- recording
    def _write(self, indices: Tensor, losses: Tensor) -> None:
        check_record(indices, losses, self.num_samples)
        dev = self.device
        idx = indices if (indices.dtype == torch.int64 and indices.device == dev) else indices.to(dev, torch.int64, non_blocking=True)
        val = losses.detach()
        if val.dtype != torch.float32 or val.device != dev:
            val = val.to(dev, torch.float32, non_blocking=True)
        b = idx.shape[0]
        if b == 0:
            return
        # Duplicates: stamp each position, read back; a duplicate reads another's stamp.
        ar = self._aranges.get(b)
        if ar is None:
            ar = self._aranges[b] = torch.arange(b, dtype=torch.int32, device=dev)
        if dev.type == "cpu":  # free to check now: fail at the bad call, before writing
            lo, hi = torch.aminmax(idx)
            if int(lo) < 0 or int(hi) >= self.num_samples:
                raise ValueError(self._record_error(idx))
            if b > 1:
                self._stamp.scatter_(0, idx, ar)
                if not torch.equal(self._stamp.index_select(0, idx), ar):
                    raise ValueError(self._record_error(idx))
        else:  # one host sync per epoch: checked in step()
            lo, hi = torch.aminmax(idx)
            idx = idx.clamp(0, self.num_samples - 1)
            self._stamp.scatter_(0, idx, ar)
            self._bad_record |= (lo < 0) | (hi >= self.num_samples) | (self._stamp.index_select(0, idx) != ar).any()
        self.pending.scatter_(0, idx, val)  # indices are unique: scatter is deterministic
        self.pending_mask.index_fill_(0, idx, True)

    def _record_error(self, idx: Tensor) -> str:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.num_samples:
            return (f"index out of range: got indices in [{lo}, {hi}] but the tracker was built for "
                    f"num_samples={self.num_samples}; pass dataset indices 0..{self.num_samples - 1}")
        return ("duplicate index in one record() call: each sample may appear once per batch; "
                "record each sample's loss once (with gradient accumulation, once per micro-batch)")

    def record(self, indices: Tensor, losses: Tensor, *, backpropagated: Optional[int] = None) -> Tensor:
        """Record the per-sample training losses of a batch; returns ``losses`` unchanged.

        ``indices`` LongTensor[B] are dataset indices, ``losses`` Tensor[B] the unreduced
        losses of the training forward pass. Reduce after recording, e.g.
        ``loss = ies.record(idx, F.cross_entropy(out, y, reduction="none")).mean()``.
        """
        self._write(indices, losses)
        self._trained += int(losses.shape[0])
        self._backprop += int(losses.shape[0]) if backpropagated is None else int(backpropagated)
        return losses

    def record_scores(self, indices: Tensor, losses: Tensor) -> None:
        """Record losses measured by a forward-only scoring pass (no backprop)."""
        self._write(indices, losses)
        self._scored += int(losses.shape[0])

    # ----------------------------------------------------------------- queries
    @property
    def active_mask(self) -> Tensor:
        """Bool ``(N,)``: samples eligible for backprop in the current epoch."""
        return ~self.excluded

    def active_indices(self) -> Tensor:
        return torch.nonzero(~self.excluded).flatten()

    def excluded_indices(self) -> Tensor:
        return torch.nonzero(self.excluded).flatten()

    def sampler(self, **kwargs: Any) -> "torch.utils.data.Sampler[int]":
        """An :class:`~ies.sampler.ActiveSampler` over this tracker (``shuffle``, ``seed``, ...)."""
        from .sampler import ActiveSampler

        return ActiveSampler(self, **kwargs)

    def should_score(self, epoch: Optional[int] = None) -> bool:
        """Whether the scoring pass runs at the end of ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else epoch
        return (e + 1) % self.config.score_every == 0

    def indices_to_score(self) -> Tensor:
        """Indices the scoring pass should measure this epoch (empty if it should not run)."""
        if not self.should_score():
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        if self.config.score_all:
            return torch.arange(self.num_samples, device=self.device)
        return self.excluded_indices()

    def scores(self) -> Tensor:
        """Current criterion value per sample ``(N,)`` (``inf`` where not yet judged)."""
        c = self.config
        return masked_score(self._columns(), self.count, order=c.order, window=c.window, m=c.m)

    # ----------------------------------------------------------------- history ring
    def _columns(self) -> list:
        """The history as H columns ``(N,)`` (views of the ring), oldest first."""
        h = self._ring.shape[0]
        return [self._ring[(self._head + j) % h] for j in range(h)]

    @property
    def history(self) -> Tensor:
        """Loss history ``(N, H)``, oldest first, newest last (a copy: NaN where not yet recorded)."""
        return torch.stack(self._columns(), dim=1)

    @history.setter
    def history(self, value: Tensor) -> None:
        self._ring = value.t().to(device=self.device, dtype=torch.float32).contiguous()
        self._head = 0

    def _commit(self, got: Tensor, dense: Optional[bool] = None) -> None:
        """Append ``pending`` to the history of the samples in ``got``; the others keep theirs.

        The ring turns by one column: the oldest column becomes the newest. Samples without a
        loss this epoch get their own history written back, shifted by one slot.
        """
        ring, h, head = self._ring, self._ring.shape[0], self._head
        if dense is None:
            dense = self.device.type != "cpu"
        if not dense:  # sparse fix-up of the (usually few) samples without a loss
            miss = torch.nonzero(~got).flatten()
            saved = ring.index_select(1, miss) if miss.numel() else None
            ring[head].copy_(self.pending)
            if saved is not None:
                ring.index_copy_(1, miss, saved.roll(1, 0))
        else:  # dense, no host sync: new slot p = got ? slot p : old slot p - 1
            oldest = ring[head].clone()
            ring[head] = torch.where(got, self.pending, ring[(head - 1) % h])
            for p in range(head - 1, head - h + 1, -1):
                ring[p % h] = torch.where(got, ring[p % h], ring[(p - 1) % h])
            ring[(head + 1) % h] = torch.where(got, ring[(head + 1) % h], oldest)
        self._head = (head + 1) % h

    # ----------------------------------------------------------------- epoch end
    def score(self, model: torch.nn.Module, dataset: Any, loss_fn: Callable[..., Tensor], **kwargs: Any) -> int:
        """Run the forward-only scoring pass over ``indices_to_score()``; returns how many were scored.

        See :func:`ies.scoring.score_losses` for ``kwargs`` (batch_size, device, forward, ...).
        """
        from .scoring import score_losses

        idx = self.indices_to_score()
        if idx.numel() == 0:
            return 0
        losses = score_losses(model, dataset, idx, loss_fn, **kwargs)
        self.record_scores(idx, losses)
        return int(idx.numel())

    def end_epoch(self, model: torch.nn.Module, dataset: Any, loss_fn: Callable[..., Tensor], **kwargs: Any) -> EpochStats:
        """Scoring pass, then :meth:`step`. The usual last line of an epoch."""
        self.score(model, dataset, loss_fn, **kwargs)
        return self.step()

    def _sync_pending(self) -> None:
        """Hook for distributed training: make ``pending``/``pending_mask`` equal on all ranks."""

    def step(self) -> EpochStats:
        """Commit this epoch's losses, decide next epoch's excluded set, return the statistics."""
        self._sync_pending()
        c = self.config
        if bool(self._bad_record):
            raise ValueError("an earlier record() call had an index out of range or a duplicate index; "
                             f"indices must be unique per batch and in 0..{self.num_samples - 1}")
        got = self.pending_mask  # (N,)
        # Samples that got a loss shift it in; others keep their history unchanged (paper's code).
        self._commit(got)
        self.count.add_(got)
        mastered = mastered_columns(self._columns(), self.count, threshold=c.threshold, order=c.order,
                                    window=c.window, m=c.m)
        next_epoch = self.epoch + 1
        annealing = c.anneal_start is not None and next_epoch >= c.anneal_start
        nxt = mastered if (c.threshold > 0 and not annealing) else torch.zeros_like(mastered)
        was = self.excluded
        newly = nxt & ~was
        back = was & ~nxt
        nonfinite = got & ~torch.isfinite(self.pending)
        # Per-sample counters.
        self.times_excluded.add_(nxt)
        self.times_reincluded.add_(back)
        self.first_mastered.masked_fill_(nxt & (self.first_mastered < 0), next_epoch)
        # The one host sync of the epoch.
        counts = torch.stack([was.sum(), mastered.sum(), newly.sum(), back.sum(), nxt.sum(), nonfinite.sum()]).tolist()
        n_excl, n_mast, n_new, n_back, n_next, n_nonfinite = (int(v) for v in counts)
        t = self.totals
        t["excluded"] += n_excl
        t["trained"] += self._trained
        t["backprop"] += self._backprop
        t["scored"] += self._scored
        t["epochs"] += 1
        t["nonfinite"] += n_nonfinite
        denom = self.num_samples * t["epochs"]
        stats = EpochStats(
            epoch=self.epoch, num_samples=self.num_samples, active=self.num_samples - n_excl, excluded=n_excl,
            mastered=n_mast, newly_excluded=n_new, reincluded=n_back, next_active=self.num_samples - n_next,
            trained_forward=self._trained, backpropagated=self._backprop, scored_forward=self._scored,
            nonfinite=n_nonfinite, backprop_saved=t["excluded"] / denom,
            compute_saved=1.0 - (t["backprop"] + c.forward_cost * (t["trained"] - t["backprop"] + t["scored"])) / denom,
        )
        self.excluded = nxt
        self.num_active = self.num_samples - n_next
        self.pending.fill_(float("nan"))
        self.pending_mask.zero_()
        self._trained = self._backprop = self._scored = 0
        self.epoch = next_epoch
        self.history_log.append(stats)
        return stats

    # ----------------------------------------------------------------- export & checkpoints
    def per_sample(self) -> Dict[str, Tensor]:
        """Per-sample counters on CPU: times excluded, times re-included, first epoch excluded (-1: never)."""
        return {
            "times_excluded": self.times_excluded.cpu(),
            "times_reincluded": self.times_reincluded.cpu(),
            "first_mastered_epoch": self.first_mastered.cpu(),
            "excluded_now": self.excluded.cpu(),
            "score": self.scores().cpu(),
        }

    def export(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`per_sample` to a ``.npz`` file (needs numpy)."""
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy ships with the cli extra
            raise ImportError("export() writes .npz and needs numpy: pip install numpy") from None
        np.savez(path, **{k: v.numpy() for k, v in self.per_sample().items()})

    _TENSORS = ("history", "count", "pending", "pending_mask", "excluded", "times_excluded", "times_reincluded", "first_mastered")

    def state_dict(self) -> Dict[str, Any]:
        """Plain tensors and ints; restore with :meth:`load_state_dict` for an exact resume."""
        sd: Dict[str, Any] = {k: getattr(self, k).detach().cpu().clone() for k in self._TENSORS}
        sd.update(
            version=_STATE_VERSION, num_samples=self.num_samples, epoch=self.epoch, config=asdict(self.config),
            totals=dict(self.totals), counters={"trained": self._trained, "backprop": self._backprop, "scored": self._scored},
            history_log=[s.as_dict() for s in self.history_log],
        )
        return sd

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore state saved by :meth:`state_dict`; raises ``ValueError`` if it does not fit."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = [k for k in (*self._TENSORS, "num_samples", "epoch", "config", "totals") if k not in state]
        if missing:
            raise ValueError(f"IES state is missing keys {missing}; was it saved by InstanceEarlyStopping.state_dict()?")
        if state["num_samples"] != self.num_samples:
            raise ValueError(
                f"IES state was saved for a dataset of {state['num_samples']} samples, this tracker has "
                f"{self.num_samples}; resume with the same training set (same size and order)"
            )
        saved = state["config"]
        diff = {k: (saved.get(k), getattr(self.config, k)) for k in ("order", "window", "m") if saved.get(k) != getattr(self.config, k)}
        if diff:
            raise ValueError(f"IES state has a different rule shape (saved, current): {diff}; build the tracker with the saved values")
        for k in self._TENSORS:
            cur = getattr(self, k)
            val = state[k]
            if not isinstance(val, Tensor) or val.shape != cur.shape:
                raise ValueError(f"IES state entry {k!r} has shape {getattr(val, 'shape', None)}, expected {tuple(cur.shape)}")
            setattr(self, k, val.to(device=self.device, dtype=cur.dtype).clone())
        self.epoch = int(state["epoch"])
        self.totals = dict(state["totals"])
        counters = state.get("counters", {})
        self._trained = int(counters.get("trained", 0))
        self._backprop = int(counters.get("backprop", 0))
        self._scored = int(counters.get("scored", 0))
        self.num_active = int((~self.excluded).sum())
        self.history_log = [EpochStats(**{f.name: d[f.name] for f in fields(EpochStats)}) for d in state.get("history_log", [])]

    def __repr__(self) -> str:
        c = self.config
        return (f"InstanceEarlyStopping(num_samples={self.num_samples}, threshold={c.threshold}, order={c.order}, "
                f"window={c.window}, m={c.m}, epoch={self.epoch}, active={self.num_active})")


IES = InstanceEarlyStopping
