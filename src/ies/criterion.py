"""The IES mastery rule as pure tensor functions.

A sample's loss history is a row of an ``(N, H)`` tensor, oldest loss first, newest
last, with ``H = order + window + m``. From it come ``window + m`` order-``k``
differences, ``m + 1`` moving averages of their absolute values (window ``w``), and
the sample's *criterion*: the sum of the last ``m`` moving averages. A sample is mastered when it
has a full history of finite losses and its criterion is below the threshold. In target
mode the tracker instead excludes the ``k`` samples with the lowest criterion
(:func:`select_most_stable`), ``k`` planned by :func:`exclusion_quota`.

The tracker runs these same functions on its history (kept as ``H`` columns).

These are the semantics of the paper's code (``moving_average_rate=3``, ``k=1``,
``threshold=1e-3``): with the defaults a sample is first judged after six losses.

Example:
    >>> h = torch.tensor([[1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]])
    >>> criterion_values(h, torch.tensor([6]), order=2, window=3, m=1)
    tensor([0.0729])
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "history_length",
    "kth_difference",
    "moving_average_abs",
    "criterion_values",
    "mastered_mask",
    "column_criterion",
    "select_most_stable",
    "exclusion_quota",
]


def history_length(order: int, window: int, m: int) -> int:
    """Number of losses a sample needs before it can be judged: ``order + window + m``."""
    return order + window + m


def kth_difference(history: Tensor, order: int) -> Tensor:
    """Order-``k`` finite differences along the last dim: ``(N, H) -> (N, H - k)``.

    Order 0 is the loss itself, order 2 is ``L(t) - 2 L(t-1) + L(t-2)``.
    """
    if order == 0:
        return history
    return torch.diff(history, n=order, dim=-1)


def moving_average_abs(diffs: Tensor, window: int) -> Tensor:
    """Moving averages of ``|diffs|`` over ``window`` consecutive entries: ``(N, D) -> (N, D - w + 1)``."""
    return diffs.abs().unfold(-1, window, 1).mean(-1)


def _raw_criterion(cols: Sequence[Tensor], *, order: int, window: int, m: int) -> Tensor:
    """The raw criterion ``(N,)`` from a history given as ``H`` columns ``(N,)``, oldest first.

    Same arithmetic as ``moving_average_abs(kth_difference(h, order), window)[:, -m:].sum(-1)``
    but on contiguous columns, skipping what the last ``m`` averages do not use (the oldest
    loss feeds only the first difference, which only the first average uses). No validity
    mask: the result is NaN or inf where a used loss is non-finite.
    """
    # Differences 1..w+m-1 (of 0..w+m-1) need losses 1..H-1.
    d = list(cols[1:])
    for level in range(order):
        if level == 0:
            d = [torch.sub(d[i + 1], d[i]) for i in range(len(d) - 1)]
        else:  # in place: d[i] is read before it is overwritten, d[i + 1] after
            for i in range(len(d) - 1):
                torch.sub(d[i + 1], d[i], out=d[i])
            d.pop()
    a = [x.abs_() for x in d] if order > 0 else [x.abs() for x in d]  # never touch the input columns
    score: Optional[Tensor] = None
    for j in range(m):  # averages 1..m; a[0] is difference 1
        s = a[j] + a[j + 1] if window > 1 else a[j].clone()
        for i in range(2, window):
            s.add_(a[j + i])
        s.div_(window)
        score = s if score is None else score.add_(s)
    assert score is not None
    return score


def criterion_values(history: Tensor, count: Tensor, *, order: int, window: int, m: int) -> Tensor:
    """Per-sample criterion ``(N,)``: the sum of the last ``m`` moving averages of ``|order-k diff|``.

    ``history`` is ``(N, H)`` with the newest loss last; ``count`` ``(N,)`` is how many
    losses each sample has recorded in total. Samples with fewer than ``H`` losses, or a
    non-finite loss in their window, get ``+inf`` (never mastered).
    """
    needed = history_length(order, window, m)
    if history.shape[-1] != needed:
        raise ValueError(
            f"history has {history.shape[-1]} columns but order={order}, window={window}, m={m} need {needed}"
        )
    return column_criterion(history.unbind(-1), count, order=order, window=window, m=m)


def column_criterion(cols: Sequence[Tensor], count: Tensor, *, order: int, window: int, m: int) -> Tensor:
    """:func:`criterion_values` on ``H`` columns ``(N,)``, oldest first (the tracker's layout)."""
    value = _raw_criterion(cols, order=order, window=window, m=m)
    # Losses 1..H-1 all feed the criterion, so it is finite only if they are; check the oldest.
    # inf where (count < H) or a loss is not finite, as arithmetic on a value >= 0 (isfinite and
    # masked_fill on floats are ~10x slower on CPU): x * 0 is NaN for a non-finite x, else +-0.
    value.add_(cols[0], alpha=0)
    short = (count < len(cols)).to(torch.int32).mul_(0x7F800000).view(torch.float32)  # +inf or 0.0
    return value.add_(short).nan_to_num_(nan=math.inf, posinf=math.inf)


def mastered_mask(history: Tensor, count: Tensor, *, threshold: float, order: int, window: int, m: int) -> Tensor:
    """Boolean ``(N,)``: which samples meet the criterion (below ``threshold``)."""
    return criterion_values(history, count, order=order, window=window, m=m) < threshold


def select_most_stable(values: Tensor, k: int, cap: Optional[float] = None) -> Tensor:
    """Boolean ``(N,)``: the ``k`` samples with the lowest finite criterion (at most ``k``).

    Ties go to the lower index (a stable sort), so every process that holds the same values
    picks the same samples. Samples with an infinite criterion (no full history) are never
    chosen, nor, with ``cap``, samples whose criterion is above ``cap``.

    Example:
        >>> select_most_stable(torch.tensor([0.3, float("inf"), 0.1, 0.1]), 2).tolist()
        [False, False, True, True]
    """
    n = values.shape[0]
    k = max(0, min(int(k), n))
    eligible = torch.isfinite(values)
    if cap is not None:
        eligible &= values <= cap
    keyed = values.masked_fill(~eligible, float("inf"))
    order = torch.sort(keyed, stable=True).indices[:k]
    chosen = torch.zeros(n, dtype=torch.bool, device=values.device)
    chosen[order] = True
    return chosen & eligible


def exclusion_quota(target: float, num_samples: int, total_epochs: int, epochs_done: int, saved: float,
                    plan_epochs: Optional[int] = None, *, schedule: str = "late", first: int = 0,
                    gain: float = 1.0, cap: Optional[int] = None) -> int:
    """How many samples to exclude next epoch to land the run's saving on ``target``.

    The run must save ``target * N * total_epochs`` backprop sample-epochs; ``saved`` is what
    it has saved so far (``N * epochs_done - backprop``). Exclusion is possible until
    ``plan_epochs`` (default ``total_epochs``; earlier with full-data annealing). The remaining
    saving is spread over the remaining epochs, re-planned every epoch, so a shortfall (early
    epochs in which no sample has a full history) is caught up later and the last epoch
    lands within one sample of the target:

    - ``"even"``: the same number every remaining epoch (rounded up);
    - ``"ramp"``: in proportion to ``epoch - first + 1`` (``first``: the first epoch that can
      exclude), capped at ``N`` per epoch, so exclusion grows as training matures, as the
      δ-rule's does;
    - ``"late"``: in proportion to its square, later still.

    ``gain`` is what one excluded sample-epoch saves (1 for backprop; ``1 - forward_cost`` when
    the saving counts compute and the sample is probed). ``cap`` is the most samples one epoch may
    exclude (default ``N``): the plan never puts more than ``cap`` in an epoch, so every epoch
    trains at least ``N - cap`` samples and the saving is spread over more epochs instead.

    Example:
        >>> exclusion_quota(0.4, 100, 10, 5, 0.0, schedule="even")   # 400 to save in 5 epochs
        80
        >>> exclusion_quota(0.4, 100, 10, 5, 0.0, schedule="even", cap=60)   # cannot: 60 is the most
        60
    """
    plan = total_epochs if plan_epochs is None else plan_epochs
    left = plan - epochs_done
    if left <= 0:
        return 0
    remaining = (target * num_samples * total_epochs - saved) / gain
    if remaining <= 0:
        return 0
    most = num_samples if cap is None else max(0, min(int(cap), num_samples))
    if schedule == "even" or left == 1:
        share = remaining / left
    else:
        power = {"ramp": 1, "late": 2}[schedule]  # epoch j weighs max(j - first + 1, 0) ** power
        share = _water_fill(epochs_done - first + 1, plan - first, power, remaining, most)
    return max(0, min(most, math.ceil(share - 1e-9)))


def _power_sum(lo: int, hi: int, power: int) -> float:
    """``sum(u ** power for u in range(lo, hi + 1))`` for ``1 <= lo``, in closed form (0 if ``hi < lo``)."""
    if hi < lo:
        return 0.0

    def upto(n: int) -> float:  # Faulhaber: 1 + ... + n, and 1 + 4 + ... + n²
        return n * (n + 1) / 2 if power == 1 else n * (n + 1) * (2 * n + 1) / 6

    return upto(hi) - upto(lo - 1)


def _water_fill(u_first: int, u_last: int, power: int, total: float, cap: float) -> float:
    """The first entry of ``min(cap, a * max(u, 0) ** power)`` for ``u = u_first..u_last``, with ``a``
    such that the entries sum to ``total``.

    The weights grow with ``u``, so the entries at the cap are the last ``c``; ``c`` is found by
    bisection on the count and each sum is in closed form, so a plan over ``E`` epochs costs
    ``O(log E)``, not ``O(E)`` per epoch.
    """
    lo_pos = max(u_first, 1)
    n_pos = u_last - lo_pos + 1  # entries with a positive weight
    if n_pos <= 0:
        return 0.0
    if total >= cap * n_pos:
        return cap if u_first > 0 else 0.0

    def scale(c: int) -> float:  # a, when the last c entries sit at the cap
        return (total - c * cap) / _power_sum(lo_pos, u_last - c, power)

    lo, hi = 0, n_pos - 1  # the fewest capped entries that leave the largest free one under the cap
    while lo < hi:
        mid = (lo + hi) // 2
        if scale(mid) * (u_last - mid) ** power <= cap:
            hi = mid
        else:
            lo = mid + 1
    return min(cap, scale(lo) * u_first ** power) if u_first > 0 else 0.0
