"""IES under ``torch.distributed`` (DDP): identical per-sample state on every rank.

Each rank trains its shard of the active set and records the losses it sees.
:class:`DistributedIES` merges them once per epoch, at the start of ``step()``, with a
sparse all-gather of the epoch's recorded ``(index, loss)`` pairs: indices travel as
int64 in their own tensor and losses as float32 in another, so nothing is rounded (a
float carrier would corrupt indices above 2**24, or above 256 with bf16). Every rank
then holds the same pending losses and applies the same rule to the same history, so
all ranks derive the same mastered set without a broadcast. The scoring pass of
excluded samples is split across ranks (rank ``r`` scores ``indices_to_score()[r::W]``)
and merged by the same gather.

Per epoch: three all-gathers (5 int64 of metadata per rank, then ``max_r n_r`` int64
indices and as many float32 losses per rank), where ``n_r`` is the number of samples
rank ``r`` recorded this epoch (trained or scored). Received bytes per rank:
``12 * W * max_r n_r`` ~ ``12 * (samples recorded this epoch)``; independent of ``N``.

Example:
    >>> dist.init_process_group("nccl")                  # or torchrun's env, gloo on CPU
    >>> ies = DistributedIES(len(train_set))
    >>> loader = DataLoader(IndexedDataset(train_set), sampler=ies.sampler(), batch_size=64)
    >>> for epoch in range(epochs):
    ...     for idx, (x, y) in loader:
    ...         loss = ies.record(idx, F.cross_entropy(ddp_model(x), y, reduction="none")).mean()
    ...         ...
    ...     stats = ies.end_epoch(ddp_model, train_set, nn.CrossEntropyLoss(reduction="none"))
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .scoring import score_losses
from .tracker import EpochStats, InstanceEarlyStopping

__all__ = ["DistributedIES", "all_gather_records", "merge_records", "world_info", "unwrap_model"]


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

    The scoring pass runs a different number of forwards on each rank, so it must not go
    through DDP's forward (which may broadcast buffers, a collective).

    Example:
        >>> unwrap_model(torch.nn.parallel.DistributedDataParallel(net)) is net
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
    width = max(max(counts), 1)
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


class DistributedIES(InstanceEarlyStopping):
    """:class:`~ies.InstanceEarlyStopping` whose state stays identical on every rank.

    Same arguments as :class:`~ies.InstanceEarlyStopping`, plus ``group`` (the process
    group; default: the world). Build it on every rank with the same arguments; record
    on each rank the losses of the samples that rank trained; call ``end_epoch`` (or
    ``score`` then ``step``) on every rank. Without an initialized process group it
    behaves exactly like the single-process tracker.

    The epoch's counters (``trained_forward``, ``backpropagated``, ``scored_forward``)
    in the returned :class:`~ies.EpochStats` are summed over ranks, so they include the
    few samples the sampler repeats to pad ranks to equal length.

    Example:
        >>> ies = DistributedIES(50_000, threshold=1e-3)
        >>> sampler = ies.sampler(shuffle=True, seed=0)   # shards the active set per rank
    """

    def __init__(self, num_samples: int, *args: Any, group: Any = None, **kwargs: Any) -> None:
        super().__init__(num_samples, *args, **kwargs)
        self.group = group
        self._synced_counters = (0, 0, 0)  # global (trained, backprop, scored) at the last sync this epoch

    def __setstate__(self, state: dict) -> None:
        # torch.multiprocessing (mp.spawn, Lightning's ddp_spawn) pickles CPU tensors into
        # shared memory: every spawned rank would write into the same buffers. Unpickling
        # gives each process its own copy.
        parent = getattr(super(), "__setstate__", None)
        if parent is not None:
            parent(state)
        else:
            self.__dict__.update(state)
        for k, v in list(self.__dict__.items()):
            if isinstance(v, Tensor):
                self.__dict__[k] = v.clone()

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
        return super().sampler(**kwargs)

    def sync(self) -> None:
        """Merge the pending losses of all ranks now (a collective: call it on every rank).

        ``step()`` does this itself; call it before saving a checkpoint in the middle of
        an epoch so the saved state holds every rank's losses. Idempotent.
        """
        self._sync_pending()

    def _sync_pending(self) -> None:
        world, _ = world_info(self.group)
        if world == 1:
            return
        local_idx = torch.nonzero(self.pending_mask).flatten()
        local_val = self.pending[local_idx]
        base = self._synced_counters
        delta = torch.tensor([self._trained - base[0], self._backprop - base[1], self._scored - base[2],
                              int(bool(self._bad_record))], dtype=torch.int64)
        idx, val, _, extras = all_gather_records(local_idx, local_val, self.group, extra=delta)
        idx, val = merge_records(idx, val)
        self.pending.fill_(float("nan"))
        self.pending_mask.zero_()
        self.pending[idx] = val.to(self.pending.dtype)
        self.pending_mask[idx] = True
        sums = extras.sum(0).tolist()
        self._trained = base[0] + int(sums[0])
        self._backprop = base[1] + int(sums[1])
        self._scored = base[2] + int(sums[2])
        self._synced_counters = (self._trained, self._backprop, self._scored)
        if sums[3]:
            self._bad_record = torch.ones((), dtype=torch.bool, device=self.device)

    def step(self) -> EpochStats:
        """Merge all ranks' losses (one gather), then :meth:`InstanceEarlyStopping.step` on each rank."""
        stats = super().step()
        self._synced_counters = (0, 0, 0)
        return stats

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._synced_counters = (self._trained, self._backprop, self._scored)

    def score(self, model: torch.nn.Module, dataset: Any, loss_fn: Optional[Callable[..., Tensor]] = None,
              **kwargs: Any) -> int:
        """Scoring pass split across ranks: this rank scores ``indices_to_score()[rank::world]``.

        ``model`` may be DDP-wrapped: the pass runs on the inner module (no collectives),
        so ranks may run different numbers of batches. Returns how many this rank scored;
        the losses reach every rank at the next ``step()``.
        """
        world, rank = world_info(self.group)
        idx = self.indices_to_score()
        if world > 1:
            idx = idx[rank::world]
        if idx.numel() == 0:
            return 0
        losses = score_losses(unwrap_model(model), dataset, idx, loss_fn, **kwargs)
        self.record_scores(idx, losses)
        return int(idx.numel())
