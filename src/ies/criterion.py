"""The IES mastery rule as pure tensor functions.

A sample's loss history is a row of an ``(N, H)`` tensor, oldest loss first, newest
last, with ``H = order + window + m``. From it come ``window + m`` order-``k``
differences, ``m + 1`` moving averages of their absolute values (window ``w``), and
the sample's *score*: the sum of the last ``m`` moving averages. A sample is mastered
when it has a full history of finite losses and its score is below the threshold.

These are the semantics of the paper's code (``moving_average_rate=3``, ``k=1``,
``threshold=1e-3``): with the defaults a sample is first judged after six losses.

Example:
    >>> h = torch.tensor([[1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]])
    >>> mastery_score(h, torch.tensor([6]), order=2, window=3, m=1)
    tensor([0.0729])
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "history_length",
    "kth_difference",
    "moving_average_abs",
    "mastery_score",
    "mastered_mask",
    "validate_rule",
    "score_columns",
]


def validate_rule(threshold: float, order: int, window: int, m: int) -> None:
    """Raise ``ValueError`` naming the bad parameter and its valid range."""
    if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= 3:
        raise ValueError(f"order must be an int in 0..3 (0: loss, 2: second difference), got {order!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an int >= 1 (the paper uses 3), got {window!r}")
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise ValueError(f"m must be an int >= 1 (the paper uses 1), got {m!r}")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}") from None
    if not t >= 0.0 or t == float("inf"):  # also rejects NaN
        raise ValueError(
            f"threshold must be a finite number >= 0 (0 disables removal; the paper uses 1e-3), got {threshold!r}"
        )


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


def score_columns(cols: Sequence[Tensor], *, order: int, window: int, m: int) -> Tensor:
    """The raw score ``(N,)`` from a history given as ``H`` columns ``(N,)``, oldest first.

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


def mastery_score(history: Tensor, count: Tensor, *, order: int, window: int, m: int) -> Tensor:
    """Per-sample score ``(N,)``: the sum of the last ``m`` moving averages of ``|order-k diff|``.

    ``history`` is ``(N, H)`` with the newest loss last; ``count`` ``(N,)`` is how many
    losses each sample has recorded in total. Samples with fewer than ``H`` losses, or a
    non-finite loss in their window, score ``+inf`` (never mastered).
    """
    needed = history_length(order, window, m)
    if history.shape[-1] != needed:
        raise ValueError(
            f"history has {history.shape[-1]} columns but order={order}, window={window}, m={m} need {needed}"
        )
    return masked_score(history.unbind(-1), count, order=order, window=window, m=m)


def masked_score(cols: Sequence[Tensor], count: Tensor, *, order: int, window: int, m: int) -> Tensor:
    """:func:`mastery_score` on ``H`` columns ``(N,)``, oldest first."""
    score = score_columns(cols, order=order, window=window, m=m)
    # Losses 1..H-1 all feed the score, so it is finite only if they are; check the oldest.
    ok = (count >= len(cols)) & torch.isfinite(cols[0]) & torch.isfinite(score)
    return score.masked_fill_(~ok, float("inf"))


def mastered_columns(cols: Sequence[Tensor], count: Tensor, *, threshold: float, order: int, window: int, m: int) -> Tensor:
    """:func:`mastered_mask` on ``H`` columns ``(N,)``, oldest first."""
    return masked_score(cols, count, order=order, window=window, m=m) < threshold


def mastered_mask(
    history: Tensor, count: Tensor, *, threshold: float, order: int, window: int, m: int
) -> Tensor:
    """Boolean ``(N,)``: which samples meet the criterion (score below ``threshold``)."""
    return mastery_score(history, count, order=order, window=window, m=m) < threshold
