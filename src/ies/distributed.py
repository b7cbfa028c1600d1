"""IES under ``torch.distributed`` (DDP): identical per-sample state on every rank.

Each rank trains its shard of the active set and records the losses it sees.
:class:`DistributedIES` merges them before the probe pass and again at the start of
``step()``, each time with a sparse all-gather of the ``(index, loss)`` pairs recorded on the
rank since the last merge (a bit in the record flags marks what a merge has already sent):
indices travel as int64 in their own tensor and losses as float32 in another, so nothing is
rounded (a float carrier would corrupt indices above 2**24, or above 256 with bf16). Every rank
then holds the same pending losses and applies the same rule to the same history, so all ranks
derive the same mastered set without a broadcast. The probe pass of samples to probe is split
across ranks (rank ``r`` probes ``indices_to_probe()[r::W]``) and merged by the same gather.

Per merge: up to three all-gathers: 7 int64 of metadata per rank (pair count, four counter
deltas, two flags), then ``max_r n_r`` int64 indices and as many float32 losses per rank, where
``n_r`` is the number of samples rank ``r`` recorded since the last merge (the record's kind
travels in the index's two low bits); the two data gathers are skipped when no rank has pairs.
Per epoch in the engine's order (``probe()`` then ``step()``): two merges, six all-gathers; each
rank sends ``2 * 56 + 12 * (max_r t_r + max_r p_r)`` bytes (``t_r``, ``p_r``: samples rank ``r``
trained, probed) ~ ``12 * (samples recorded this epoch) / W`` and receives ``W`` times that,
~ ``12 * (samples recorded this epoch)``; independent of ``N``. The first merge or sampler of a
tracker, and the first after a ``load_state_dict``, add one 56-byte digest gather
(tests/test_distributed.py counts these bytes through a wrapped ``all_gather``).

Example:
    >>> # under torchrun (not run here; tests/test_distributed.py runs 2 ranks):
    >>> dist.init_process_group("nccl")  # doctest: +SKIP
    >>> tracker = DistributedIES(len(train_set))
    >>> loader = DataLoader(IndexedDataset(train_set), sampler=tracker.sampler(), batch_size=64)
    >>> ddp_model = model                                # torch.nn.parallel.DistributedDataParallel(model) under torchrun
    >>> for epoch in range(epochs):
    ...     for idx, (x, y) in loader:
    ...         loss = tracker.record(idx, F.cross_entropy(ddp_model(x), y, reduction="none")).mean()
    ...         opt.zero_grad(); loss.backward(); opt.step()
    ...     stats = tracker.end_epoch(ddp_model, train_set, nn.CrossEntropyLoss(reduction="none"))
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .accounting import COUNTS, EpochStats
from .probing import probe_losses
from .tracker import IES

__all__ = ["DistributedIES", "all_gather_records", "merge_records", "world_info", "unwrap_model", "config_digest",
           "state_digest"]


def world_info(group: Any = None) -> Tuple[int, int]:
    """``(world_size, rank)`` of ``group``, or ``(1, 0)`` without an initialized process group.

    Example:
        >>> world_info()
        (1, 0)
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _comm_device(group: Any, preferred: torch.device) -> torch.device:
    """Where tensors must live for this backend: CPU for gloo/mpi, the accelerator for nccl & co."""
    backend = str(torch.distributed.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    if preferred.type != "cpu":
        return preferred
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return preferred


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (else ``model``).

    The probe pass runs a different number of forwards on each rank, so it must not go
    through DDP's forward (which may broadcast buffers, a collective).

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> unwrap_model(torch.nn.DataParallel(net)) is net    # DistributedDataParallel alike, under torchrun
        True
    """
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def all_gather_records(indices: Tensor, losses: Tensor, group: Any = None, *,
                       extra: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gather every rank's ``(indices, losses)`` pairs, exactly, in rank order.

    ``indices`` (int64) and ``losses`` (cast to float32) travel in separate tensors;
    ``extra`` is an optional int64 vector of per-rank counters gathered alongside.
    Returns ``(indices, losses, ranks, extras)``: the concatenation over ranks 0..W-1,
    the rank each pair came from, and the ``(W, len(extra))`` counters. Every rank gets
    the same result. Without a process group it returns the input.

    Example:
        >>> idx, val, src, _ = all_gather_records(torch.tensor([2**24 + 1]), torch.tensor([0.5]).bfloat16())
        >>> int(idx[0]) == 2**24 + 1, val.dtype
        (True, torch.float32)
    """
    if indices.dim() != 1 or losses.dim() != 1 or indices.shape[0] != losses.shape[0]:
        raise ValueError("all_gather_records needs 1-D indices and losses of the same length (one loss per index)")
    if indices.dtype.is_floating_point:
        raise ValueError(f"indices must be an integer tensor (int64 on the wire), got {indices.dtype}")
    extra_t = torch.zeros(0, dtype=torch.int64) if extra is None else extra.detach().to(torch.int64).flatten()
    world, _ = world_info(group)
    if world == 1:
        idx = indices.to(torch.int64)
        return idx, losses.detach().float(), torch.zeros_like(idx), extra_t.unsqueeze(0)
    dist = torch.distributed
    dev = _comm_device(group, indices.device)
    idx = indices.detach().to(dev, torch.int64)
    val = losses.detach().to(dev, torch.float32)
    meta = torch.cat([torch.tensor([idx.numel()], dtype=torch.int64), extra_t.cpu()]).to(dev)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    metas_t = torch.stack(metas).cpu()  # (W, 1 + E): one small host sync
    counts = metas_t[:, 0].tolist()
    width = max(counts)
    if width == 0:  # no rank has pairs: the counters were all there was to send
        empty = torch.zeros(0, dtype=torch.int64, device=indices.device)
        return empty, torch.zeros(0, dtype=torch.float32, device=indices.device), empty.clone(), metas_t[:, 1:]
    pad = width - idx.numel()
    if pad:
        idx = torch.cat([idx, torch.full((pad,), -1, dtype=torch.int64, device=dev)])
        val = torch.cat([val, torch.full((pad,), float("nan"), dtype=torch.float32, device=dev)])
    all_idx: List[Tensor] = [torch.empty_like(idx) for _ in range(world)]
    all_val: List[Tensor] = [torch.empty_like(val) for _ in range(world)]
    dist.all_gather(all_idx, idx, group=group)
    dist.all_gather(all_val, val, group=group)
    out_idx = torch.cat([t[:c] for t, c in zip(all_idx, counts)]).to(indices.device)
    out_val = torch.cat([t[:c] for t, c in zip(all_val, counts)]).to(indices.device)
    ranks = torch.repeat_interleave(torch.arange(world), torch.tensor(counts)).to(indices.device)
    return out_idx, out_val, ranks, metas_t[:, 1:]


def merge_records(indices: Tensor, losses: Tensor) -> Tuple[Tensor, Tensor]:
    """One loss per index: where an index occurs several times, the first occurrence wins.

    With :func:`all_gather_records`' rank order this is "the lowest rank wins", which is
    deterministic on every device (a stable sort and integer ops only). Duplicates come
    from the sampler's padding, which repeats a few samples on other ranks.

    Example:
        >>> merge_records(torch.tensor([3, 1, 3]), torch.tensor([0.1, 0.2, 0.3]))
        (tensor([1, 3]), tensor([0.2000, 0.1000]))
    """
    if indices.numel() == 0:
        return indices.to(torch.int64), losses
    srt, order = torch.sort(indices, stable=True)
    first = torch.ones_like(srt, dtype=torch.bool)
    first[1:] = srt[1:] != srt[:-1]
    keep = order[first]
    return indices[keep], losses[keep]


def config_digest(config: Any, num_samples: int, seed: Optional[int]) -> Tuple[int, int, int]:
    """What every rank must agree on: a CRC of the rule settings, the dataset size, the sampler seed."""
    text = repr(sorted(config.to_dict().items())).encode()
    return zlib.crc32(text), int(num_samples), -1 if seed is None else int(seed)


def state_digest(tracker: IES) -> Tuple[int, int, int]:
    """What ranks resumed from one checkpoint share: the epoch, the excluded count, a CRC of the state's sums."""
    ex = tracker.excluded
    place = torch.arange(1, ex.numel() + 1, device=ex.device, dtype=torch.float64)
    hist = torch.nan_to_num(tracker.history.double(), nan=0.5, posinf=1.5, neginf=-1.5)
    sums = (float((place * ex).sum()), int(tracker.count.sum()), float(hist.sum()), float((hist * place[:, None]).sum()))
    return int(tracker.epoch), int(ex.sum()), zlib.crc32(repr(sums).encode())


_DIGEST_PARTS = ("rule settings", "dataset size", "sampler seed", "epoch", "excluded count", "saved state")


class DistributedIES(IES):
    """:class:`~ies.IES` whose state stays identical on every rank.

    Same arguments as :class:`~ies.IES`, plus ``group`` (the process group; default: the
    world). Build it on every rank with the same arguments; record on each rank the losses
    of the samples that rank trained; call ``end_epoch`` (or ``probe`` then ``step``) on
    every rank. Without an initialized process group it behaves exactly like the
    single-process tracker.

    When the sampler is built and at the first merge after it (or after a ``load_state_dict``)
    the ranks compare a digest of the rule settings, the dataset size, the sampler seed and
    the state (epoch, excluded count, a hash of the state: ranks that resumed from different
    checkpoints, or one resumed and one fresh) and raise ``ValueError`` naming the ranks that
    differ (instead of silently leaving samples untrained, training on unequal shards, or
    diverging until the process group times out). The time a collective may wait is the
    process group's: ``init_process_group(timeout=...)``.

    The epoch's counters (``trained``, ``backpropagated``, ``probed``) in the returned
    :class:`~ies.EpochStats` are summed over ranks, so they include the few samples the
    sampler repeats to pad ranks to equal length.

    Example:
        >>> tracker = DistributedIES(50_000, threshold=1e-3)
        >>> sampler = tracker.sampler(shuffle=True, seed=0)   # shards the active set per rank
    """

    def __init__(self, num_samples: int, config: Any = None, *, group: Any = None, **kwargs: Any) -> None:
        super().__init__(num_samples, config, **kwargs)
        self.group = group
        self._synced = dict(self.books.epoch)  # global counts at the last merge this epoch
        self._sampler_seed: Optional[int] = None
        self._digest_checked = False
        self._loaded_unchecked = False  # a state was loaded here since the ranks last compared digests

    def __setstate__(self, state: dict) -> None:
        # torch.multiprocessing (mp.spawn, Lightning's ddp_spawn) pickles CPU tensors into
        # shared memory: every spawned rank would write into the same buffers. Unpickling
        # gives each process its own copy.
        self.__dict__.update(state)
        for owner in (self, self._history, self._records):  # the tracker and the parts that hold its tensors
            for k, v in list(vars(owner).items()):
                if isinstance(v, Tensor):
                    setattr(owner, k, v.clone())

    @property
    def world_size(self) -> int:
        return world_info(self.group)[0]

    @property
    def rank(self) -> int:
        return world_info(self.group)[1]

    def sampler(self, **kwargs: Any) -> "torch.utils.data.Sampler[int]":
        """An :class:`~ies.ActiveSampler` sharded over this tracker's group (``shuffle``, ``seed``, ...)."""
        world, rank = world_info(self.group)
        kwargs.setdefault("num_replicas", world)
        kwargs.setdefault("rank", rank)
        self._sampler_seed = int(kwargs.get("seed", 0))
        if world > 1 and not self._digest_checked:  # every rank builds its sampler: refuse before unequal shards
            self._check_digest()
        return super().sampler(**kwargs)

    def sync(self) -> None:
        """Merge the epoch's records of all ranks now (a collective: call it on every rank).

        ``probe()`` and ``step()`` do this themselves; call it before saving a checkpoint in
        the middle of an epoch so the saved state holds every rank's losses. Idempotent.
        """
        self._sync_pending()

    def _check_digest(self) -> None:
        mine = torch.tensor((*config_digest(self.config, self.num_samples, self._sampler_seed), *state_digest(self)),
                            dtype=torch.int64)
        _, _, _, all_digests = all_gather_records(torch.zeros(0, dtype=torch.int64), torch.zeros(0), self.group,
                                                  extra=mine)
        rows = [tuple(r) for r in all_digests.tolist()]
        if any(r != rows[0] for r in rows):
            what = [name for j, name in enumerate(_DIGEST_PARTS) if len({r[j] for r in rows}) > 1]
            differ = [i for i, r in enumerate(rows) if r != rows[0]]
            fix = ("load the same checkpoint on every rank (or none)" if what[0] in _DIGEST_PARTS[3:] else
                   "build the tracker and its sampler with the same arguments and seed on every rank")
            raise ValueError(f"DistributedIES ranks disagree on the {', '.join(what)}: rank(s) {differ} differ from "
                             f"rank 0 (per rank: {rows}); {fix}")
        self._digest_checked, self._loaded_unchecked = True, False

    def _sync_pending(self) -> None:
        world, _ = world_info(self.group)
        if world == 1:
            return
        if not self._digest_checked:
            self._check_digest()
        rec = self._records
        local_idx = rec.unsynced()  # only what was recorded here since the last merge
        # Kind travels in the two low bits of the int64 index: exact, and no extra gather.
        wire = local_idx * 4 + rec.has("train")[local_idx].long() + 2 * rec.has("probe")[local_idx].long()
        delta = [self.books.epoch[k] - self._synced[k] for k in COUNTS]
        extra = torch.tensor([*(int(round(d)) for d in delta), int(bool(rec.bad)), int(self._loaded_unchecked)],
                             dtype=torch.int64)
        wire, val, _, extras = all_gather_records(wire, rec.pending[local_idx], self.group, extra=extra)
        idx, kind = wire // 4, wire % 4
        first, val = merge_records(idx, val)  # the lowest rank's loss wins; a new loss replaces a merged one
        rec.merge_in(first, val, idx[(kind & 1) > 0], idx[(kind & 2) > 0])
        sums = extras.sum(0).tolist()
        for k, d in zip(COUNTS, sums):
            self.books.epoch[k] = self._synced[k] + d
        self._synced = dict(self.books.epoch)
        if sums[len(COUNTS)]:
            rec.bad = torch.ones((), dtype=torch.bool, device=self.device)
        if sums[-1]:  # a rank loaded a state since the last check: every rank saw the flag, so all compare
            self._check_digest()

    def step(self) -> EpochStats:
        """Merge the records added since the last merge (up to three gathers), then :meth:`IES.step`."""
        stats = super().step()
        self._synced = dict(self.books.epoch)
        return stats

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)  # every rank loads the same state: its records are merged already
        self._loaded_unchecked = True  # ranks compare the loaded state at the next sampler or merge
        self._records.mark_synced()
        self._synced = dict(self.books.epoch)

    def probe(self, model: torch.nn.Module, data: Any, loss_fn: Optional[Callable[..., Tensor]] = None,
              **kwargs: Any) -> int:
        """Probe pass split across ranks: this rank probes ``indices_to_probe()[rank::world]``.

        Merges the ranks' training records first (a collective), so an active sample that no
        rank trained is probed too. ``model`` may be DDP-wrapped: the pass runs on the inner
        module (no collectives), so ranks may run different numbers of batches. Returns how
        many this rank probed; the losses reach every rank at the next ``step()``.
        """
        self._sync_pending()
        world, rank = world_info(self.group)
        idx = self.indices_to_probe()
        if world > 1:
            idx = idx[rank::world]
        if idx.numel() == 0:
            return 0
        t0 = self._clock()
        losses = probe_losses(unwrap_model(model), data, idx, loss_fn, **kwargs)
        self.record_probe(idx, losses, seconds=self._clock() - t0)
        return int(idx.numel())
