"""PNG plots of a comparison (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

__all__ = ["pyplot", "plot_comparison", "plot_tradeoff", "mean_curve"]

_FAMILY_STYLE = {"random": ("tab:gray", "s"), "infobatch": ("tab:orange", "^"), "none": ("black", "*")}
_ORDER_COLORS = {0: "tab:purple", 1: "tab:green", 2: "tab:blue", 3: "tab:red"}


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (ImportError naming the extra if missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install instance-early-stopping[cli]") from None
    return plt


def mean_curve(runs: List[Dict[str, Any]], key: str) -> tuple:
    """Epochs and the per-epoch mean of ``key`` over runs (runs may stop at different epochs)."""
    by_epoch: Dict[int, List[float]] = {}
    for r in runs:
        for row in r["epochs"]:
            v = row.get(key)
            if v is not None:
                by_epoch.setdefault(int(row["epoch"]), []).append(float(v))
    es = sorted(by_epoch)
    return es, [sum(by_epoch[e]) / len(by_epoch[e]) for e in es]


def plot_comparison(runs: List[Dict[str, Any]], out_dir: Path) -> Dict[str, Path]:
    """Four plots: test accuracy, samples in backprop, cumulative saving (per epoch), accuracy vs wall time."""
    from .runs import run_label

    plt = pyplot()
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r.get("label") or run_label(r["config"]), []).append(r)
    n_seeds = max(len(v) for v in groups.values())
    specs = [
        ("test_accuracy", "test_acc", "Test accuracy (%)", "Test accuracy per epoch"),
        ("backprop_samples", "backpropagated", "Samples backpropagated per epoch", "Samples in backprop per epoch"),
        ("backprop_saved", "backprop_saved", "Cumulative backprop saved (%)", "Cumulative backprop saved"),
    ]
    out: Dict[str, Path] = {}
    for name, key, ylabel, title in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for label, rs in groups.items():
            es, ys = mean_curve(rs, key)
            if key == "backprop_saved":
                ys = [100 * y for y in ys]
            ax.plot(es, ys, label=label, lw=1.6)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (mean of {n_seeds} seed{'s' * (n_seeds > 1)})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        out[name] = path
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, rs in groups.items():
        _, xs = mean_curve(rs, "wall_seconds")
        _, ys = mean_curve(rs, "test_acc")
        ax.plot(xs, ys, label=label, lw=1.6)
    ax.set_xlabel("Training wall time (s, training + probe pass)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title("Test accuracy vs training wall time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "accuracy_vs_time.png"
    fig.savefig(path)
    plt.close(fig)
    out["accuracy_vs_time"] = path
    return out


def plot_tradeoff(points: List[Dict[str, Any]], path: Path, title: str) -> Path:
    """Test accuracy (mean ± std over seeds) against backprop saved, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=110)
    fams: Dict[str, List[Dict[str, Any]]] = {}
    for p in points:
        fams.setdefault(p["family"], []).append(p)
    for fam, ps in fams.items():
        ps = sorted(ps, key=lambda p: p["backprop_saved"])
        xs = [100 * p["backprop_saved"] for p in ps]
        ys = [p["acc_mean"] for p in ps]
        es = [p["acc_std"] for p in ps]
        method = ps[0]["method"]
        if method == "none":
            ax.axhline(ys[0], color="black", ls="--", lw=1, alpha=0.6)
            ax.errorbar(xs, ys, yerr=es, color="black", marker="*", ms=11, ls="none", label=fam, capsize=3)
            continue
        if method == "ies":
            color, marker = _ORDER_COLORS.get(ps[0]["params"].get("order", 2), None), "o"
        else:
            color, marker = _FAMILY_STYLE.get(method, (None, "o"))
        ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, lw=1.6, capsize=3, label=fam)
    ax.set_xlabel("Total backprop saved (%)")
    ax.set_ylabel("Final test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
