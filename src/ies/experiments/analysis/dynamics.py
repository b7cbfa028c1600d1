"""Training-dynamics analyses: mastery over time (Fig. 2), CV of loss differences (Fig. 3,
App. C) and forgetting of early-removed samples (App. H)."""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence

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
        for r in res.epochs:
            for k in orders:
                rows.append({"condition": "kept", "order": k, "seed": seed, "epoch": r["epoch"],
                             "mastered": r[f"mastered_o{k}"], "test_acc": r["test_acc"]})
        for k in orders:
            params = {**extra, "threshold": threshold, "order": k}
            res = st.train(f"ies-order{k}", st.config("ies", seed, params))
            removed[k].append(res)
            for r in res.epochs:
                rows.append({"condition": "removed", "order": k, "seed": seed, "epoch": r["epoch"],
                             "mastered": r["mastered"], "excluded": r["excluded"],
                             "newly_excluded": r["newly_excluded"], "reincluded": r["reincluded"],
                             "backprop_saved": r["backprop_saved"], "test_acc": r["test_acc"]})
    n = len(st.data)
    summary: Dict[str, Any] = {"num_samples": n, "threshold": threshold, "removed": {}, "kept": {}}
    for k in orders:
        es, c = curve(removed[k], "mastered")
        new = sum(r["newly_excluded"] for res in removed[k] for r in res.epochs)
        back = sum(r["reincluded"] for res in removed[k] for r in res.epochs)
        summary["removed"][k] = {
            "final_mastered": c[-1] if c else None, "max_mastered": max(c) if c else None,
            "churn": churn(c), "reinclusion_rate": back / new if new else None,
            "backprop_saved": mean_or_nan(res.summary["backprop_saved"] for res in removed[k]),
            "final_test_acc": mean_or_nan(res.summary["final_test_acc"] for res in removed[k]),
            "first_epoch_with_mastered": next((e for e, v in zip(es, c) if v > 0), None),
        }
        es, c = curve(kept, f"mastered_o{k}")
        summary["kept"][k] = {"final_mastered": c[-1] if c else None, "max_mastered": max(c) if c else None,
                              "churn": churn(c), "first_epoch_with_mastered": next((e for e, v in zip(es, c) if v > 0), None)}
    summary["none_final_test_acc"] = mean_or_nan(r.summary["final_test_acc"] for r in kept)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for k in orders:
        es, c = curve(removed[k], "mastered")
        axes[0].plot(es, c, color=ORDER_COLORS.get(k), label=f"order {k}")
        es, c = curve(kept, f"mastered_o{k}")
        axes[1].plot(es, c, color=ORDER_COLORS.get(k), label=f"order {k}")
    axes[0].set_title("mastered samples are removed (IES, order k)")
    axes[1].set_title("samples keep training (no removal; criterion tracked)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.axhline(n, color="gray", lw=0.5, ls=":")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"samples meeting the criterion (delta={threshold:g}, N={n})")
    fig.suptitle(f"Mastery over time ({st.base.dataset}, {len(st.seeds)} seed(s))")
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
            for r in res.epochs:
                for k in orders:
                    rows.append({"optimizer": opt, "lr": lrs[opt], "seed": seed, "epoch": r["epoch"], "order": k,
                                 "cv_diff": r[f"cv_diff_o{k}"], "cv_score": r[f"cv_score_o{k}"],
                                 "mean_absdiff": r[f"mean_absdiff_o{k}"], "test_acc": r["test_acc"]})
    start = max(orders) + 1 + skip
    summary: Dict[str, Any] = {"lr": lrs, "epochs_averaged_from": start, "by_optimizer": {}}
    for opt in optimizers:
        s: Dict[str, Any] = {"final_test_acc": mean_or_nan(r.summary["final_test_acc"] for r in results[opt])}
        for k in orders:
            es, c = curve(results[opt], f"cv_diff_o{k}")
            vals = [v for e, v in zip(es, c) if e >= start]
            _, cs = curve(results[opt], f"cv_score_o{k}")
            es2, _ = curve(results[opt], f"cv_score_o{k}")
            svals = [v for e, v in zip(es2, cs) if e >= start]
            s[f"order{k}"] = {
                "mean_cv_diff": mean_or_nan(vals), "median_cv_diff": statistics.median(vals) if vals else None,
                "std_over_epochs_cv_diff": statistics.pstdev(vals) if len(vals) > 1 else None,
                "mean_cv_score": mean_or_nan(svals),
            }
        ranked = sorted(orders, key=lambda k: s[f"order{k}"]["mean_cv_diff"]
                        if finite(s[f"order{k}"]["mean_cv_diff"]) else math.inf)
        s["lowest_mean_cv_diff_order"] = ranked[0]
        s["most_stable_order"] = min(orders, key=lambda k: s[f"order{k}"]["std_over_epochs_cv_diff"]
                                     if finite(s[f"order{k}"]["std_over_epochs_cv_diff"]) else math.inf)
        summary["by_optimizer"][opt] = s

    plt = pyplot()
    fig, axes = plt.subplots(1, len(optimizers), figsize=(5.5 * len(optimizers), 4), sharey=True, squeeze=False)
    for ax, opt in zip(axes[0], optimizers):
        for k in orders:
            es, c = curve(results[opt], f"cv_diff_o{k}")
            ax.plot(es, c, color=ORDER_COLORS.get(k), label=f"order {k}")
        ax.set_yscale("log")
        ax.set_title(f"{opt} (lr {lrs[opt]:g})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    axes[0][0].set_ylabel("CV across samples of |k-th loss difference|")
    fig.suptitle(f"Coefficient of variation of loss differences ({st.base.dataset}, no removal)")
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


def forgetting(st: Study, *, fraction: float = 0.05, at_epochs: Optional[Sequence[int]] = None,
               ies_params: Optional[Dict[str, Any]] = None, control: bool = True) -> Dict[str, Any]:
    """The first ``fraction`` of samples IES removes: their loss and accuracy over training vs the whole
    set, and how often they were re-included. With ``control`` the same samples are followed in a
    ``none`` run (same seed) for comparison."""
    rows: List[Dict[str, Any]] = []
    per_seed: List[Dict[str, Any]] = []
    curves: Dict[str, List[List[float]]] = {}
    for seed in st.seeds:
        probe = LossProbe((), keep_losses=True)
        res = st.train("ies", st.config("ies", seed, ies_params), callbacks=[probe])
        ps = res.per_sample
        first = ps["first_mastered_epoch"].long()
        group = _select_first(first, fraction, seed)
        n = first.numel()
        mask = torch.zeros(n, dtype=torch.bool)
        mask[group] = True
        loss = torch.stack(probe.losses)  # (E, N)
        corr = torch.stack(probe.correct).float()
        ctrl = None
        if control:
            cprobe = LossProbe((), keep_losses=True)
            st.train("none", st.config("none", seed), callbacks=[cprobe])
            ctrl = (torch.stack(cprobe.losses), torch.stack(cprobe.correct).float())
        complete = int(first[group].max()) if group.numel() else None
        reinc = ps["times_reincluded"].long()
        ever_removed = first >= 0
        info = {
            "seed": seed, "group_size": int(group.numel()), "target_size": int(math.ceil(fraction * n)),
            "group_removed_by_epoch": complete,
            "group_reincluded_mean": float(reinc[mask].float().mean()) if group.numel() else None,
            "group_reincluded_max": int(reinc[mask].max()) if group.numel() else None,
            "group_ever_reincluded_fraction": float((reinc[mask] > 0).float().mean()) if group.numel() else None,
            "group_excluded_fraction_of_remaining_epochs": (
                float((ps["times_excluded"][mask].float() / (len(res.epochs) - first[mask].float() + 1)).mean())
                if group.numel() else None),
            "all_removed_reincluded_mean": float(reinc[ever_removed].float().mean()) if ever_removed.any() else None,
            "all_removed_reincluded_max": int(reinc[ever_removed].max()) if ever_removed.any() else None,
            "backprop_saved": res.summary["backprop_saved"], "final_test_acc": res.summary["final_test_acc"],
        }
        per_seed.append(info)
        for e in range(loss.shape[0]):
            r = {"seed": seed, "epoch": e + 1,
                 "group_loss": float(loss[e, mask].mean()) if group.numel() else None,
                 "group_acc": 100 * float(corr[e, mask].mean()) if group.numel() else None,
                 "all_loss": float(loss[e].mean()), "all_acc": 100 * float(corr[e].mean()),
                 "rest_loss": float(loss[e, ~mask].mean()), "rest_acc": 100 * float(corr[e, ~mask].mean()),
                 "group_excluded": int((res.epochs[e]["excluded"])) if e < len(res.epochs) else None}
            if ctrl is not None and group.numel():
                r["group_loss_none"] = float(ctrl[0][e, mask].mean())
                r["group_acc_none"] = 100 * float(ctrl[1][e, mask].mean())
                r["all_loss_none"] = float(ctrl[0][e].mean())
            rows.append(r)
    epochs = max(r["epoch"] for r in rows)
    if at_epochs is None:
        at_epochs = sorted({1, *range(10, epochs + 1, 10), epochs})
    at_epochs = [e for e in at_epochs if 1 <= e <= epochs]

    def avg(key: str, e: int) -> float:
        return mean_or_nan(r.get(key) for r in rows if r["epoch"] == e)

    table = [{"epoch": e, **{k: avg(k, e) for k in ("group_loss", "group_acc", "all_loss", "all_acc", "rest_loss",
                                                    "rest_acc", "group_loss_none", "group_acc_none")}}
             for e in at_epochs]
    summary = {
        "fraction": fraction, "at_epochs": table, "per_seed": per_seed,
        "group_reincluded_mean": mean_or_nan(p["group_reincluded_mean"] for p in per_seed),
        "group_reincluded_max": max((p["group_reincluded_max"] or 0) for p in per_seed),
        "group_ever_reincluded_fraction": mean_or_nan(p["group_ever_reincluded_fraction"] for p in per_seed),
    }

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    es = sorted({r["epoch"] for r in rows})
    styles = [("group_loss", "first 5% removed (IES)", "tab:blue", "-"), ("all_loss", "whole set (IES)", "black", "-"),
              ("group_loss_none", "same samples, no removal", "tab:blue", ":"),
              ("all_loss_none", "whole set, no removal", "black", ":")]
    for key, lab, col, ls in styles:
        ys = [avg(key, e) for e in es]
        if any(finite(y) for y in ys):
            axes[0].plot(es, ys, color=col, ls=ls, label=lab.replace("5%", f"{100 * fraction:g}%"))
    for key, lab, col, ls in (("group_acc", "first removed (IES)", "tab:blue", "-"), ("all_acc", "whole set (IES)", "black", "-"),
                              ("group_acc_none", "same samples, no removal", "tab:blue", ":")):
        ys = [avg(key, e) for e in es]
        if any(finite(y) for y in ys):
            axes[1].plot(es, ys, color=col, ls=ls, label=lab)
    done = [p["group_removed_by_epoch"] for p in per_seed if p["group_removed_by_epoch"] is not None]
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
    claim = "App. H: samples removed early are not forgotten (their loss stays low) and are rarely re-included."
    return st.finish("forgetting", rows, summary, fig, claim)
