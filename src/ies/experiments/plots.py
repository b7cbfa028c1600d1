"""PNG plots of a comparison (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

__all__ = ["plot_comparison", "mean_curve"]


def _pyplot():
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
    from .report import run_label

    plt = _pyplot()
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
    ax.set_xlabel("Training wall time (s, training + scoring pass)")
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
