"""The epoch's recorded losses: cheap to append to, checked and written once per epoch.

``record()`` is on the training hot path, once per batch. On CPU it only queues the batch's
``(indices, losses)``; :meth:`EpochRecords.flush` (run by the tracker before it reads the
epoch's records: the probe pass, ``step()``, a checkpoint) concatenates the queue, checks the
range and in-call duplicates of every queued call at once, and writes the losses and the
per-sample record flags with a handful of tensor ops. A bad call raises ``ValueError`` naming
the call and leaves every tensor unchanged (the queue since the last flush is discarded). Off
CPU the checks would cost a host sync per call, so each call writes at once and the checks are
accumulated on the device and reported at ``step()``.

What each sample got this epoch is one byte of flags: bit 0 trained, bit 1 trained more than
once, bit 2 probed, bit 3 probed more than once (bit 4: merged, see :data:`SYNCED`). The flags saturate, so no number of records
can wrap them (an int16 count wrapped at 32,768 records of one sample and lost its loss).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor

__all__ = ["EpochRecords", "EpochRecord", "KIND_BIT", "SYNCED"]

KIND_BIT = {"train": 1, "probe": 4}  # the kind's "recorded" bit; the bit above it: "recorded more than once"
SYNCED = 16  # bit 4: merged with the other ranks' records and not recorded since (DistributedIES)
_TALLY = ("excluded", "mastered", "both", "next", "nonfinite", "twice", "while_excluded", "trained", "got")


def _u8(mask: Tensor) -> Tensor:
    """A bool tensor's bytes as uint8 (a view when contiguous, no copy)."""
    return mask.view(torch.uint8) if mask.is_contiguous() else mask.to(torch.uint8)


class EpochRecords:
    """``pending`` losses ``(N,)`` and one byte of record flags per sample for this epoch."""

    def __init__(self, num_samples: int, device: torch.device) -> None:
        self.num_samples = num_samples
        self.device = device
        self.pending = torch.full((num_samples,), float("nan"), dtype=torch.float32, device=device)
        self.flags = torch.zeros(num_samples, dtype=torch.uint8, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # off-CPU: a bad index was seen
        # False while every loss written this epoch is known to be finite (step() then skips a pass over N)
        self.maybe_nonfinite = device.type != "cpu"
        self._untouched = set(KIND_BIT.values())  # kind bits no write has set since the epoch began (none is set)
        self._queue: Dict[str, List[Tuple[Tensor, Tensor]]] = {"train": [], "probe": []}

    # ------------------------------------------------------------ counts by kind (0, 1, or 2: more than once)
    def count(self, kind: str) -> Tensor:
        """``(N,)`` uint8: 0, 1, or 2 (recorded more than once) records of ``kind`` this epoch."""
        bit, f = KIND_BIT[kind], self.flags
        return (f & bit).bool().to(torch.uint8) + (f & (bit << 1)).bool().to(torch.uint8)

    def set_count(self, kind: str, value: Tensor) -> None:
        """Replace the flags of ``kind`` from per-sample counts ``(N,)`` (0, 1, more)."""
        bit, v = KIND_BIT[kind], value.to(self.device)
        self._untouched.clear()
        keep = self.flags & (0xFF ^ (3 * bit))
        self.flags = keep | (v > 0).to(torch.uint8) * bit | (v > 1).to(torch.uint8) * (bit << 1)

    train = property(lambda self: self.count("train"), lambda self, v: self.set_count("train", v))
    probe = property(lambda self: self.count("probe"), lambda self, v: self.set_count("probe", v))

    def has(self, kind: str) -> Tensor:
        """Bool ``(N,)``: got at least one record of ``kind``."""
        return (self.flags & KIND_BIT[kind]).bool()

    # ------------------------------------------------------------ writing
    def add(self, idx: Tensor, val: Tensor, kind: str) -> None:
        """Queue (CPU) or write (elsewhere) one call's int64 indices and float32 losses."""
        if self.device.type == "cpu":
            self._queue[kind].append((idx, val))
            return
        self._untouched.clear()
        lo, hi = torch.aminmax(idx)
        srt = torch.sort(idx).values  # in-call duplicates, on the device (no host sync)
        self.bad |= (lo < 0) | (hi >= self.num_samples) | (srt[1:] == srt[:-1]).any()
        idx, bit = idx.clamp(0, self.num_samples - 1), KIND_BIT[kind]
        self.pending.scatter_(0, idx, val)
        old = self.flags.index_select(0, idx)  # a sample recorded in an earlier call gets "more than once"
        self.flags.scatter_(0, idx, (old | ((old & bit) << 1) | bit) & (0xFF ^ SYNCED))

    def flush(self) -> None:
        """Check and write the queued calls (training first, then probes: a probe's loss wins).

        All checks come before any loss is written: the range of every call, then per kind the
        flags (gathered, marked, scattered back), whose counts show at once whether the calls
        held a repeated index; only then (rare: a misuse or a recorded-twice sample) the exact
        per-position check that names the call. A failure restores the flags, so nothing changes.
        """
        queued = [(kind, self._queue[kind]) for kind in ("train", "probe") if self._queue[kind]]
        if not queued:
            return
        self._queue = {"train": [], "probe": []}
        batches = []
        for kind, calls in queued:
            idx = torch.cat([i for i, _ in calls]) if len(calls) > 1 else calls[0][0]
            val = torch.cat([v for _, v in calls]) if len(calls) > 1 else calls[0][1]
            self._check_range(idx, calls)
            batches.append((kind, idx, val, calls))
        done: List[Tuple[Tensor, Tensor]] = []  # (indices, their flags before): to undo on a failed check
        try:
            for kind, idx, _, calls in batches:
                self._mark(idx, KIND_BIT[kind], calls, done)
        except ValueError:
            for idx, old in reversed(done):
                self.flags.scatter_(0, idx, old)
            raise
        for _, idx, val, _ in batches:
            self.pending.scatter_(0, idx, val)  # a sample recorded twice: the later loss (CPU scatter is in order)
            if not self.maybe_nonfinite and not math.isfinite(float(val.sum())):  # one cheap reduction
                self.maybe_nonfinite = True

    def _check_range(self, idx: Tensor, calls: List[Tuple[Tensor, Tensor]]) -> None:
        lo, hi = (int(x) for x in torch.aminmax(idx))
        if lo < 0 or hi >= self.num_samples:
            sizes = torch.tensor([i.shape[0] for i, _ in calls])
            bad = int(torch.nonzero((idx < 0) | (idx >= self.num_samples))[0])
            raise ValueError(f"index out of range in record() call {self._call_of(bad, sizes)} of this epoch: got "
                             f"{int(idx[bad])} but the tracker was built for num_samples={self.num_samples}; pass "
                             f"dataset indices 0..{self.num_samples - 1}")

    def _mark(self, idx: Tensor, bit: int, calls: List[Tuple[Tensor, Tensor]], done: List[Tuple[Tensor, Tensor]]) -> None:
        """Set ``bit`` (and "more than once") in the flags of ``idx``; raise on an index repeated in one call."""
        old = self.flags.index_select(0, idx)  # equal for repeated indices, so the scatter below is order-free
        before = 0 if bit in self._untouched else int(torch.count_nonzero(self.flags & bit))
        self._untouched.discard(bit)
        self.flags.scatter_(0, idx, (old | ((old & bit) << 1) | bit) & (0xFF ^ SYNCED))
        done.append((idx, old))
        b = idx.shape[0]
        if int(torch.count_nonzero(old & bit)) == 0 and int(torch.count_nonzero(self.flags & bit)) - before == b:
            return  # b first records of b distinct samples: no index repeated
        twice = self._repeated(idx, calls)
        if twice.numel():  # recorded in two calls of this flush
            self.flags.index_put_((twice,), self.flags.index_select(0, twice) | (bit << 1))

    def _repeated(self, idx: Tensor, calls: List[Tuple[Tensor, Tensor]]) -> Tensor:
        """Indices that occur in two of ``calls``; raises ``ValueError`` naming a call that repeats one."""
        stamp = torch.empty(self.num_samples, dtype=torch.int32, device=idx.device)  # scratch, freed on return
        pos = torch.arange(idx.shape[0], dtype=torch.int32, device=idx.device)
        stamp.scatter_(0, idx, pos)  # the last position of each index wins (in order on CPU)
        winner = stamp.index_select(0, idx)
        dup = winner != pos
        sizes = torch.tensor([i.shape[0] for i, _ in calls])
        call = torch.repeat_interleave(torch.arange(len(calls)), sizes).to(idx.device)
        same = dup & (call.index_select(0, winner.long()) == call)
        if bool(same.any()):
            raise ValueError(f"duplicate index in record() call {self._call_of(int(torch.nonzero(same)[0]), sizes)} "
                             "of this epoch: each sample may appear once per batch; record each sample's loss once "
                             "(with gradient accumulation, once per micro-batch)")
        return idx[dup]

    @staticmethod
    def _call_of(position: int, sizes: Tensor) -> str:
        return f"#{int((sizes.cumsum(0) <= position).sum()) + 1}"

    # ------------------------------------------------------------ merging ranks (DistributedIES)
    def unsynced(self) -> Tensor:
        """Indices recorded on this rank since the last merge (all of this epoch's before the first)."""
        self.flush()
        f = self.flags
        return torch.nonzero(f.bool() & ~(f & SYNCED).bool()).flatten()

    def merge_in(self, first: Tensor, val: Tensor, trained: Tensor, probed: Tensor) -> None:
        """A merge's result: loss ``val`` of each index in ``first`` (unique); kind bits added for the
        indices in ``trained`` and ``probed`` (repeats allowed). Local "more than once" bits of these
        samples are dropped, so every rank ends with the same flags."""
        f = self.flags
        self._untouched.clear()
        f.index_copy_(0, first, (f.index_select(0, first) & (KIND_BIT["train"] | KIND_BIT["probe"])) | SYNCED)
        for kind, idx in (("train", trained), ("probe", probed)):
            f.index_put_((idx,), f.index_select(0, idx) | KIND_BIT[kind])
        self.pending.index_copy_(0, first, val.to(self.pending.dtype))
        self.maybe_nonfinite = True

    def mark_synced(self) -> None:
        """Every record is held by every rank (e.g. after all ranks loaded the same state)."""
        self.flush()
        self.flags |= self.flags.bool().to(torch.uint8) * SYNCED

    # ------------------------------------------------------------ end of epoch
    def tally(self, was: Tensor, mastered: Tensor, nxt: Tensor) -> Dict[str, int]:
        """The epoch's counts in one pass: a byte per sample (flags + 4 bits), one bincount, one host sync.

        ``excluded`` (``was``), ``mastered``, ``both`` (``was & nxt``), ``next`` (``nxt``), ``nonfinite``
        (recorded, loss not finite), ``twice`` (recorded more than once, either kind), ``while_excluded``
        (``was`` and trained), ``trained``, ``got`` (recorded).
        """
        code = (self.flags & 15) | (_u8(was) << 4) | (_u8(mastered) << 5) | (_u8(nxt) << 6)
        if self.maybe_nonfinite:
            code |= (~torch.isfinite(self.pending)).to(torch.uint8) << 7
        bins = torch.bincount(code.to(torch.int64) if code.device.type != "cpu" else code, minlength=256).tolist()
        out = dict.fromkeys(_TALLY, 0)
        for c, k in enumerate(bins):
            if not k:
                continue
            w, mst, nx, got, tr = c & 16, c & 32, c & 64, c & 5, c & 1
            for key, on in (("excluded", w), ("mastered", mst), ("both", w and nx), ("next", nx), ("trained", tr),
                            ("nonfinite", got and c & 128), ("twice", c & 10), ("while_excluded", w and tr),
                            ("got", got)):
                if on:
                    out[key] += k
        return out

    def reset(self) -> None:
        """A new epoch: nothing recorded."""
        self._queue = {"train": [], "probe": []}
        self.pending.fill_(float("nan"))
        self.flags.zero_()
        self._untouched = set(KIND_BIT.values())
        self.maybe_nonfinite = self.device.type != "cpu"


class EpochRecord:
    """On the tracker: a tensor of the epoch's records, read (or replaced) after the queued calls are written."""

    def __init__(self, field: str, doc: str) -> None:
        self.field, self.__doc__ = field, doc

    def __get__(self, tracker: Any, owner: Any = None) -> Any:
        if tracker is None:
            return self
        tracker._records.flush()
        if self.field == "pending":  # the caller may write into it: step() counts non-finite losses exactly
            tracker._records.maybe_nonfinite = True
        return getattr(tracker._records, self.field)

    def __set__(self, tracker: Any, value: Tensor) -> None:
        tracker._records.flush()
        setattr(tracker._records, self.field, value)
        tracker._records.maybe_nonfinite = True
