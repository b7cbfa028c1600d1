"""Training-dynamics analyses: mastery over time (Fig. 2), CV of loss differences (Fig. 3,
App. C) and forgetting of early-removed samples (App. H)."""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..config import DEFAULTS_BY_DATASET
from .common import Study, curve, finite, mean_or_nan, pyplot
from .instruments import LossProbe

__all__ = ["mastery_over_time", "cv_of_differences", "forgetting", "churn", "optimizer_lr"]

ORDER_COLORS = {0: "tab:purple", 1: "tab:green", 2: "tab:blue", 3: "tab:red"}


def churn(counts: Sequence[float]) -> float:
    """Share of a count curve's movement that is downward: ``sum(drops) / sum(|changes|)`` (0 = monotone up)."""
    ups = downs = 0.0
    for a, b in zip(counts, counts[1:]):
        if b > a:
            ups += b - a
        else:
            downs += a - b
    return downs / (ups + downs) if ups + downs > 0 else 0.0


# --------------------------------------------------------------------------- Figure 2


def _first_positive(epochs: Sequence[int], counts: Sequence[float]) -> Optional[int]:
    return next((e for e, v in zip(epochs, counts) if v > 0), None)


def _count_stats(counts: Sequence[float]) -> Dict[str, Any]:
    return {"final_mastered": counts[-1] if counts else None, "max_mastered": max(counts) if counts else None,
            "churn": churn(counts)}


def _kept_rows(res: Any, orders: Sequence[int], seed: int) -> List[Dict[str, Any]]:
    return [{"condition": "kept", "order": k, "seed": seed, "epoch": r["epoch"], "mastered": r[f"mastered_o{k}"],
             "test_acc": r["test_acc"]} for r in res.epochs for k in orders]


def _removed_rows(res: Any, order: int, seed: int) -> List[Dict[str, Any]]:
    return [{"condition": "removed", "order": order, "seed": seed, "epoch": r["epoch"], "mastered": r["mastered"],
             "excluded": r["excluded"], "newly_excluded": r["newly_excluded"], "reincluded": r["reincluded"],
             "backprop_saved": r["backprop_saved"], "test_acc": r["test_acc"]} for r in res.epochs]


def _mastery_summary(removed: Dict[int, list], kept: list, threshold: float, n: int) -> Dict[str, Any]:
    summary: Dict[str, Any] = {"num_samples": n, "threshold": threshold, "removed": {}, "kept": {}}
    for k, runs in removed.items():
        es, c = curve(runs, "mastered")
        new = sum(r["newly_excluded"] for res in runs for r in res.epochs)
        back = sum(r["reincluded"] for res in runs for r in res.epochs)
        summary["removed"][k] = {
            **_count_stats(c), "reinclusion_rate": back / new if new else None,
            "backprop_saved": mean_or_nan(res.summary["backprop_saved"] for res in runs),
            "final_test_acc": mean_or_nan(res.summary["final_test_acc"] for res in runs),
            "first_epoch_with_mastered": _first_positive(es, c),
        }
        es, c = curve(kept, f"mastered_o{k}")
        summary["kept"][k] = {**_count_stats(c), "first_epoch_with_mastered": _first_positive(es, c)}
    summary["none_final_test_acc"] = mean_or_nan(r.summary["final_test_acc"] for r in kept)
    return summary


def _mastery_figure(removed: Dict[int, list], kept: list, threshold: float, n: int, title: str) -> Any:
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4), sharey=True)
    for k, runs in removed.items():
        axes[0].plot(*curve(runs, "mastered"), color=ORDER_COLORS.get(k), label=f"order {k}")
        axes[1].plot(*curve(kept, f"mastered_o{k}"), color=ORDER_COLORS.get(k), label=f"order {k}")
    axes[0].set_title("mastered samples are removed (IES, order k)")
    axes[1].set_title("samples keep training (no removal; criterion tracked)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.axhline(n, color="gray", lw=0.5, ls=":")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"samples meeting the criterion (delta={threshold:g}, N={n})")
    fig.suptitle(title)
    return fig


def mastery_over_time(st: Study, *, orders: Sequence[int] = (0, 1, 2, 3), threshold: float = 1e-3,
                      ies_params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Samples meeting the order-k criterion per epoch, with removal (IES, order k) and without (none).

    *Removed*: one IES run per order ``k`` (threshold ``delta``); the count is the policy's own
    ``mastered`` (the samples it excludes next epoch). *Kept training*: one ``none`` run whose
    full-training-set losses (eval mode, after every epoch) feed one tracker per order.
    """
    extra = {k: v for k, v in (ies_params or {}).items() if k not in ("order", "threshold")}
    rows: List[Dict[str, Any]] = []
    removed: Dict[int, list] = {k: [] for k in orders}
    kept: list = []
    for seed in st.seeds:
        probe = LossProbe(orders, threshold=threshold, window=extra.get("window", 3), m=extra.get("m", 1))
        res = st.train("none", st.config("none", seed), callbacks=[probe])
        kept.append(res)
        rows += _kept_rows(res, orders, seed)
        for k in orders:
            res = st.train(f"ies-order{k}", st.config("ies", seed, {**extra, "threshold": threshold, "order": k}))
            removed[k].append(res)
            rows += _removed_rows(res, k, seed)
    n = len(st.data)
    summary = _mastery_summary(removed, kept, threshold, n)
    fig = _mastery_figure(removed, kept, threshold, n,
                          f"Mastery over time ({st.base.dataset}, {len(st.seeds)} seed(s))")
    claim = ("Fig. 2: with removal the number of mastered samples grows steadily; the second-order "
             "criterion identifies mastered samples most stably.")
    return st.finish("mastery", rows, summary, fig, claim)


# --------------------------------------------------------------------------- Figure 3 / App. C


def optimizer_lr(dataset: str, optimizer: str, lr: Optional[float], sgd_lr: float) -> Optional[float]:
    """The learning rate an optimizer gets here: ``sgd_lr`` for the SGD variants with a schedule
    (their rates differ from Adam's by ~100x, so one ``lr`` cannot serve both); otherwise ``lr``
    if given, else the dataset default when it is the dataset's optimizer, else the paper default."""
    if optimizer.startswith("sgd") and optimizer != "sgd-f":
        return sgd_lr
    if lr is not None:
        return lr
    d = DEFAULTS_BY_DATASET.get(dataset, {})
    if optimizer == d.get("optimizer"):
        return d.get("lr")
    return {"adam": 1e-3, "adam-cos": 1e-3, "adamw": 1e-3, "sgd-f": 1e-3}.get(optimizer, sgd_lr)


def _after(results: list, key: str, start: int) -> List[float]:
    """The mean curve of ``key`` from epoch ``start`` on."""
    es, c = curve(results, key)
    return [v for e, v in zip(es, c) if e >= start]


def _cv_summary(results: list, orders: Sequence[int], start: int) -> Dict[str, Any]:
    """One optimizer's CV statistics per order, and which order is lowest and most stable."""
    s: Dict[str, Any] = {"final_test_acc": mean_or_nan(r.summary["final_test_acc"] for r in results)}
    for k in orders:
        vals = _after(results, f"cv_diff_o{k}", start)
        s[f"order{k}"] = {
            "mean_cv_diff": mean_or_nan(vals), "median_cv_diff": statistics.median(vals) if vals else None,
            "std_over_epochs_cv_diff": statistics.pstdev(vals) if len(vals) > 1 else None,
            "mean_cv_score": mean_or_nan(_after(results, f"cv_score_o{k}", start)),
        }

    def lowest(stat: str) -> int:
        return min(orders, key=lambda k: s[f"order{k}"][stat] if finite(s[f"order{k}"][stat]) else math.inf)

    s["lowest_mean_cv_diff_order"] = lowest("mean_cv_diff")
    s["most_stable_order"] = lowest("std_over_epochs_cv_diff")
    return s


def _cv_figure(results: Dict[str, list], orders: Sequence[int], lrs: Dict[str, Any], title: str) -> Any:
    fig, axes = pyplot().subplots(1, len(results), figsize=(5.5 * len(results), 4), sharey=True, squeeze=False)
    for ax, (opt, runs) in zip(axes[0], results.items()):
        for k in orders:
            ax.plot(*curve(runs, f"cv_diff_o{k}"), color=ORDER_COLORS.get(k), label=f"order {k}")
        ax.set_yscale("log")
        ax.set_title(f"{opt} (lr {lrs[opt]:g})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    axes[0][0].set_ylabel("CV across samples of |k-th loss difference|")
    fig.suptitle(title)
    return fig


def cv_of_differences(st: Study, *, optimizers: Sequence[str] = ("sgd", "adam"), orders: Sequence[int] = (0, 1, 2, 3),
                      lr: Optional[float] = None, sgd_lr: float = 0.1, skip: int = 0) -> Dict[str, Any]:
    """CV across samples (std/mean) of ``|order-k loss difference|`` per epoch, no removal, per optimizer.

    Summary statistics average over epochs ``> max(orders) + skip`` so every order is averaged over
    the same epochs.
    """
    rows: List[Dict[str, Any]] = []
    results: Dict[str, list] = {o: [] for o in optimizers}
    lrs: Dict[str, Any] = {}
    for opt in optimizers:
        lrs[opt] = optimizer_lr(st.base.dataset, opt, lr, sgd_lr)
        for seed in st.seeds:
            cfg = st.config("none", seed, optimizer=opt, lr=lrs[opt],
                            weight_decay=None if st.base.optimizer != opt else st.base.weight_decay)
            res = st.train(f"none-{opt}", cfg, callbacks=[LossProbe(orders)])
            results[opt].append(res)
            rows += [{"optimizer": opt, "lr": lrs[opt], "seed": seed, "epoch": r["epoch"], "order": k,
                      "cv_diff": r[f"cv_diff_o{k}"], "cv_score": r[f"cv_score_o{k}"],
                      "mean_absdiff": r[f"mean_absdiff_o{k}"], "test_acc": r["test_acc"]}
                     for r in res.epochs for k in orders]
    start = max(orders) + 1 + skip
    summary: Dict[str, Any] = {"lr": lrs, "epochs_averaged_from": start,
                               "by_optimizer": {opt: _cv_summary(results[opt], orders, start) for opt in optimizers}}
    fig = _cv_figure(results, orders, lrs,
                     f"Coefficient of variation of loss differences ({st.base.dataset}, no removal)")
    claim = ("Fig. 3 / App. C: the CV across samples of second-order differences is the lowest and most "
             "stable, so one global threshold suits all samples.")
    return st.finish("cv", rows, summary, fig, claim)


# --------------------------------------------------------------------------- App. H


def _select_first(first_epoch: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of the first ``ceil(fraction * N)`` samples removed (ties at the cutoff epoch broken at random)."""
    n = first_epoch.numel()
    k = max(1, int(math.ceil(fraction * n)))
    removed = torch.nonzero(first_epoch >= 0).flatten()
    if removed.numel() == 0:
        return removed
    g = torch.Generator().manual_seed(int(seed))
    perm = removed[torch.randperm(removed.numel(), generator=g)]
    order = torch.sort(first_epoch[perm], stable=True).indices
    return perm[order][:k].sort().values


def _group_stats(res: Any, first: torch.Tensor, mask: torch.Tensor, fraction: float) -> Dict[str, Any]:
    """How the group (``mask``) was removed and re-included in one IES run."""
    ps, has = res.per_sample, bool(mask.any())
    reinc = ps["times_reincluded"].long()
    ever_removed = first >= 0
    remaining = len(res.epochs) - first[mask].float() + 1  # epochs from its removal to the end
    return {
        "group_size": int(mask.sum()), "target_size": int(math.ceil(fraction * first.numel())),
        "group_removed_by_epoch": int(first[mask].max()) if has else None,
        "group_reincluded_mean": float(reinc[mask].float().mean()) if has else None,
        "group_reincluded_max": int(reinc[mask].max()) if has else None,
        "group_ever_reincluded_fraction": float((reinc[mask] > 0).float().mean()) if has else None,
        "group_excluded_fraction_of_remaining_epochs": (
            float((ps["times_excluded"][mask].float() / remaining).mean()) if has else None),
        "all_removed_reincluded_mean": float(reinc[ever_removed].float().mean()) if ever_removed.any() else None,
        "all_removed_reincluded_max": int(reinc[ever_removed].max()) if ever_removed.any() else None,
        "backprop_saved": res.summary["backprop_saved"], "final_test_acc": res.summary["final_test_acc"],
    }


def _group_rows(seed: int, res: Any, probe: LossProbe, mask: torch.Tensor,
                control: Optional[LossProbe]) -> List[Dict[str, Any]]:
    """Per epoch: loss and accuracy of the group, the rest and the whole set (and in the control run)."""
    loss, corr = torch.stack(probe.losses), torch.stack(probe.correct).float()  # (E, N)
    has = bool(mask.any())
    rows = []
    for e in range(loss.shape[0]):
        r = {"seed": seed, "epoch": e + 1,
             "group_loss": float(loss[e, mask].mean()) if has else None,
             "group_acc": 100 * float(corr[e, mask].mean()) if has else None,
             "all_loss": float(loss[e].mean()), "all_acc": 100 * float(corr[e].mean()),
             "rest_loss": float(loss[e, ~mask].mean()), "rest_acc": 100 * float(corr[e, ~mask].mean()),
             "group_excluded": int((res.epochs[e]["excluded"])) if e < len(res.epochs) else None}
        if control is not None and has:
            closs, ccorr = control.losses[e], control.correct[e].float()
            r["group_loss_none"] = float(closs[mask].mean())
            r["group_acc_none"] = 100 * float(ccorr[mask].mean())
            r["all_loss_none"] = float(closs.mean())
        rows.append(r)
    return rows


def _follow_first_removed(st: Study, seed: int, fraction: float, ies_params: Optional[Dict[str, Any]],
                          control: bool) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """One seed: the IES run (and the control run); the group's statistics and per-epoch rows."""
    probe = LossProbe((), keep_losses=True)
    res = st.train("ies", st.config("ies", seed, ies_params), callbacks=[probe])
    first = res.per_sample["first_mastered_epoch"].long()
    mask = torch.zeros(first.numel(), dtype=torch.bool)
    mask[_select_first(first, fraction, seed)] = True
    cprobe = None
    if control:
        cprobe = LossProbe((), keep_losses=True)
        st.train("none", st.config("none", seed), callbacks=[cprobe])
    info = {"seed": seed, **_group_stats(res, first, mask, fraction)}
    return info, _group_rows(seed, res, probe, mask, cprobe)


def _mean_at(rows: Sequence[Dict[str, Any]], key: str, epoch: int) -> float:
    return mean_or_nan(r.get(key) for r in rows if r["epoch"] == epoch)


_FORGETTING_LINES = {  # axis -> (key, label, colour, line style)
    0: [("group_loss", "first 5% removed (IES)", "tab:blue", "-"), ("all_loss", "whole set (IES)", "black", "-"),
        ("group_loss_none", "same samples, no removal", "tab:blue", ":"),
        ("all_loss_none", "whole set, no removal", "black", ":")],
    1: [("group_acc", "first removed (IES)", "tab:blue", "-"), ("all_acc", "whole set (IES)", "black", "-"),
        ("group_acc_none", "same samples, no removal", "tab:blue", ":")],
}


def _forgetting_figure(rows: Sequence[Dict[str, Any]], summary: Dict[str, Any], fraction: float) -> Any:
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    es = sorted({r["epoch"] for r in rows})
    for i, lines in _FORGETTING_LINES.items():
        for key, lab, col, ls in lines:
            ys = [_mean_at(rows, key, e) for e in es]
            if any(finite(y) for y in ys):
                axes[i].plot(es, ys, color=col, ls=ls, label=lab.replace("5%", f"{100 * fraction:g}%"))
    done = [p["group_removed_by_epoch"] for p in summary["per_seed"] if p["group_removed_by_epoch"] is not None]
    for ax in axes:
        if done:
            ax.axvline(max(done), color="gray", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss (eval mode, all samples)")
    axes[1].set_ylabel("training accuracy (%)")
    fig.suptitle(f"Forgetting: the first {100 * fraction:g}% of samples removed by IES "
                 f"(re-included mean {summary['group_reincluded_mean']:.2f}, max {summary['group_reincluded_max']})")
    return fig


def forgetting(st: Study, *, fraction: float = 0.05, at_epochs: Optional[Sequence[int]] = None,
               ies_params: Optional[Dict[str, Any]] = None, control: bool = True) -> Dict[str, Any]:
    """The first ``fraction`` of samples IES removes: their loss and accuracy over training vs the whole
    set, and how often they were re-included. With ``control`` the same samples are followed in a
    ``none`` run (same seed) for comparison."""
    rows: List[Dict[str, Any]] = []
    per_seed: List[Dict[str, Any]] = []
    for seed in st.seeds:
        info, seed_rows = _follow_first_removed(st, seed, fraction, ies_params, control)
        per_seed.append(info)
        rows += seed_rows
    epochs = max(r["epoch"] for r in rows)
    if at_epochs is None:
        at_epochs = sorted({1, *range(10, epochs + 1, 10), epochs})
    keys = ("group_loss", "group_acc", "all_loss", "all_acc", "rest_loss", "rest_acc", "group_loss_none",
            "group_acc_none")
    table = [{"epoch": e, **{k: _mean_at(rows, k, e) for k in keys}} for e in at_epochs if 1 <= e <= epochs]
    summary = {
        "fraction": fraction, "at_epochs": table, "per_seed": per_seed,
        "group_reincluded_mean": mean_or_nan(p["group_reincluded_mean"] for p in per_seed),
        "group_reincluded_max": max((p["group_reincluded_max"] or 0) for p in per_seed),
        "group_ever_reincluded_fraction": mean_or_nan(p["group_ever_reincluded_fraction"] for p in per_seed),
    }
    claim = "App. H: samples removed early are not forgotten (their loss stays low) and are rarely re-included."
    return st.finish("forgetting", rows, summary, _forgetting_figure(rows, summary, fraction), claim)
