"""Robustness analyses: label noise (paper App. G) and transfer of the learned features (Table 3)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import TensorData, subset_classes
from ..noise import make_noisy_labels
from .common import Study, curve, mean_or_nan, pyplot
from .landscape import METHOD_STYLE

__all__ = ["label_noise", "transfer", "head_features", "finetune_head", "NoiseSetting"]

NoiseSetting = Tuple[str, float, Optional[int]]  # (kind, rate, epochs or None for the default)


# --------------------------------------------------------------------------- App. G


def _setting_name(kind: str, rate: float, epochs: Optional[int]) -> str:
    return f"{kind}-{round(100 * rate)}" + (f"-{epochs}ep" if epochs else "")


def _train_noisy(st: Study, kind: str, rate: float, epochs: Optional[int], noisy: Tensor,
                 ies_params: Optional[Dict[str, Any]]) -> Tuple[Dict[str, list], List[Dict[str, Any]]]:
    """No removal and IES on the noisy labels, every seed; each run folder gets ``noisy_labels.npy``."""
    import numpy as np

    data = replace(st.data, y_train=noisy, name=f"{st.data.name}+{kind}{rate:g}")
    name = _setting_name(kind, rate, epochs)
    labels_np = noisy.cpu().numpy()

    def save_labels(d: Path) -> None:
        np.save(d / "noisy_labels.npy", labels_np)

    rows: List[Dict[str, Any]] = []
    results: Dict[str, list] = {"none": [], "ies": []}
    for seed in st.seeds:
        for method in ("none", "ies"):
            extra = {"epochs": epochs} if epochs else {}
            cfg = st.config(method, seed, ies_params if method == "ies" else None, **extra)
            res = st.train(f"{method}-{name}", cfg, data=data, extra_files={"labels": save_labels})
            results[method].append(res)
            rows += [{"setting": name, "noise": kind, "rate": rate, "method": method, "seed": seed,
                      "epoch": r["epoch"], "test_acc": r["test_acc"], "train_acc": r["train_acc"],
                      "backprop_saved": r["backprop_saved"], "active": r["active"]} for r in res.epochs]
    return results, rows


def _setting_summary(kind: str, rate: float, flipped: Tensor, results: Dict[str, list]) -> Dict[str, Any]:
    """Best accuracy, its epoch and backprop saved per method; which samples IES removed (clean or noisy)."""
    s: Dict[str, Any] = {"noise": kind, "rate": rate, "realised_rate": float(flipped.float().mean()),
                         "epochs": int(results["none"][0].config["epochs"])}
    for method, rs in results.items():
        best = [max(r.epochs, key=lambda row: row["test_acc"]) for r in rs]
        s[method] = {
            "best_test_acc": mean_or_nan(b["test_acc"] for b in best),
            "best_epoch": mean_or_nan(b["epoch"] for b in best),
            "final_test_acc": mean_or_nan(r.summary["final_test_acc"] for r in rs),
            "backprop_saved": mean_or_nan(r.summary["backprop_saved"] for r in rs),
        }
    fl = flipped.cpu()
    ever = [r.per_sample["first_mastered_epoch"] >= 0 for r in results["ies"]]
    s["ies"]["noisy_fraction_of_removed"] = mean_or_nan(
        float(fl[e].float().mean()) if e.any() else float("nan") for e in ever)
    s["ies"]["removed_fraction_of_noisy"] = mean_or_nan(float(e[fl].float().mean()) for e in ever) if fl.any() else None
    s["ies"]["removed_fraction_of_clean"] = mean_or_nan(float(e[~fl].float().mean()) for e in ever)
    return s


def _noise_figure(all_results: Dict[str, Dict[str, list]], summary: Dict[str, Any], title: str) -> Any:
    names = list(all_results)
    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = pyplot().subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        s = summary["settings"][name]
        for method, rs in all_results[name].items():
            col, lab = METHOD_STYLE[method]
            lab = f"{lab} (best {s[method]['best_test_acc']:.1f}%" + (
                f", saved {100 * s[method]['backprop_saved']:.0f}%)" if method == "ies" else ")")
            ax.plot(*curve(rs, "test_acc"), color=col, label=lab)
        ax.set_title(f"{s['noise']} noise {100 * s['rate']:g}% (realised {100 * s['realised_rate']:.1f}%)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def label_noise(st: Study, *, settings: Sequence[NoiseSetting], noise_seed: int = 0,
                ies_params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train IES and no removal on noisy training labels (test labels stay clean).

    Each setting's noisy labels come from ``noise_seed`` (the same for every method and training
    seed) and are saved as ``noisy_labels.npy`` in each of its run folders.
    """
    rows: List[Dict[str, Any]] = []
    summary: Dict[str, Any] = {"noise_seed": noise_seed, "settings": {}}
    all_results: Dict[str, Dict[str, list]] = {}
    for kind, rate, epochs in settings:
        noisy, flipped = make_noisy_labels(kind, st.data.x_train, st.data.y_train, rate, st.data.num_classes,
                                           seed=noise_seed)
        results, setting_rows = _train_noisy(st, kind, rate, epochs, noisy, ies_params)
        rows += setting_rows
        name = _setting_name(kind, rate, epochs)
        all_results[name] = results
        summary["settings"][name] = _setting_summary(kind, rate, flipped, results)
    fig = _noise_figure(all_results, summary,
                        f"Label noise ({st.base.dataset}, {len(st.seeds)} seed(s), clean test labels)")
    claim = "App. G: under label noise IES keeps the accuracy of training on all samples while saving computation."
    return st.finish("noise", rows, summary, fig, claim)


# --------------------------------------------------------------------------- Table 3


def _last_linear(model: nn.Module) -> nn.Linear:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classification head")
    return heads[-1]


def head_features(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Inputs of the last ``nn.Linear`` (the frozen body's features), eval mode, no grad: ``(N, F)``."""
    head = _last_linear(model)
    feats: List[Tensor] = []
    hook = head.register_forward_pre_hook(lambda mod, inp: feats.append(inp[0].detach().flatten(1)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                model(x[s:s + batch_size])
    finally:
        hook.remove()
        model.train(was)
    return torch.cat(feats)


def finetune_head(model: nn.Module, target: TensorData, *, epochs: Sequence[int] = (1, 5), lr: float = 1e-3,
                  batch_size: int = 64, seed: int = 0) -> Dict[int, float]:
    """Train a fresh head on the frozen body's features of ``target``; test accuracy (%) after each of ``epochs``.

    The body is frozen and in eval mode, so training the head on precomputed features is exactly
    fine-tuning the head alone. One head is trained for ``max(epochs)`` epochs with constant-lr Adam
    and read at each requested epoch (the same as separate 1- and 5-epoch fine-tunes).
    """
    dev = next(model.parameters()).device
    ftr = head_features(model, target.x_train.to(dev))
    fte = head_features(model, target.x_test.to(dev))
    ytr, yte = target.y_train.to(dev), target.y_test.to(dev)
    torch.manual_seed(seed)  # same head init for every pretrained model
    head = nn.Linear(ftr.shape[1], target.num_classes).to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    out: Dict[int, float] = {}
    for ep in range(1, max(epochs) + 1):
        perm = torch.randperm(ftr.shape[0], generator=gen).to(dev)
        for s in range(0, perm.numel(), batch_size):
            i = perm[s:s + batch_size]
            loss = F.cross_entropy(head(ftr[i]), ytr[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if ep in epochs:
            with torch.no_grad():
                out[ep] = 100.0 * float((head(fte).argmax(1) == yte).float().mean())
    return out


def _transfer_figure(summary: Dict[str, Any], accs: Dict[str, List[Dict[int, float]]], head_epochs: Sequence[int],
                     title: str) -> Any:
    """Bars: mean transfer accuracy per head-epoch count and method; grey dots: the seeds."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    width = 0.38
    for j, method in enumerate(("none", "ies")):
        col, lab = METHOD_STYLE[method]
        vals = [summary[method][f"transfer_acc_{e}ep"] for e in head_epochs]
        xs = [i + (j - 0.5) * width for i in range(len(head_epochs))]
        bars = ax.bar(xs, vals, width, color=col, alpha=0.8, label=f"pretrained with {lab}")
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        for a in accs[method]:
            ax.scatter(xs, [a[e] for e in head_epochs], color="gray", s=8, zorder=3)
    ax.set_xticks(range(len(head_epochs)), [f"head fine-tuned {e} epoch(s)" for e in head_epochs])
    ax.set_ylabel(f"test accuracy on classes {','.join(map(str, summary['target_classes']))} (%)")
    lo = min(summary[m][f"transfer_acc_{e}ep"] for m in ("none", "ies") for e in head_epochs)
    ax.set_ylim(max(0.0, lo - 15), 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=9)
    return fig


def transfer(st: Study, *, source: Sequence[int] = (0, 1, 2, 3, 4), target: Sequence[int] = (5, 6, 7, 8, 9),
             head_epochs: Sequence[int] = (1, 5), head_lr: Optional[float] = None,
             ies_params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Pretrain on ``source`` classes with and without IES, then fine-tune only a new head on ``target``."""
    src, tgt = subset_classes(st.data, source), subset_classes(st.data, target)
    lr = head_lr if head_lr is not None else (st.base.lr if st.base.optimizer in ("adam", "adamw") else 1e-3)
    rows: List[Dict[str, Any]] = []
    for seed in st.seeds:
        for method in ("none", "ies"):
            cfg = st.config(method, seed, ies_params if method == "ies" else None)
            res = st.train(f"pretrain-{method}", cfg, data=src, keep_model=True)
            accs = finetune_head(res.model, tgt, epochs=head_epochs, lr=lr, batch_size=int(cfg.batch_size), seed=seed)
            res.model = None
            rows.append({"method": method, "seed": seed, "pretrain_test_acc": res.summary["final_test_acc"],
                         "pretrain_backprop_saved": res.summary["backprop_saved"],
                         **{f"transfer_acc_{e}ep": a for e, a in accs.items()}})
    summary: Dict[str, Any] = {"source_classes": list(source), "target_classes": list(target), "head_lr": lr,
                               "source_train_size": len(src), "target_train_size": len(tgt)}
    by_method = {m: [r for r in rows if r["method"] == m] for m in ("none", "ies")}
    keys = ["pretrain_test_acc", "pretrain_backprop_saved", *(f"transfer_acc_{e}ep" for e in head_epochs)]
    for method, rs in by_method.items():
        summary[method] = {k: mean_or_nan(r[k] for r in rs) for k in keys}
    for e in head_epochs:
        summary[f"ies_minus_none_{e}ep"] = summary["ies"][f"transfer_acc_{e}ep"] - summary["none"][f"transfer_acc_{e}ep"]
    accs_by_method = {m: [{e: r[f"transfer_acc_{e}ep"] for e in head_epochs} for r in rs] for m, rs in by_method.items()}
    title = (f"Transfer ({st.base.dataset}: classes {','.join(map(str, source))} -> "
             f"{','.join(map(str, target))}, {len(st.seeds)} seed(s))")
    claim = "Table 3: models pretrained with IES transfer as well as or better than models pretrained on all samples."
    return st.finish("transfer", rows, summary, _transfer_figure(summary, accs_by_method, head_epochs, title), claim)
