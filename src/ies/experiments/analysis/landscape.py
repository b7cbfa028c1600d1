"""Optimisation-landscape analyses (paper Fig. 4): gradient norm and sharpness, IES vs no removal."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .common import Study, curve, finite, mean_or_nan, pyplot
from .instruments import GradNormProbe, SharpnessProbe

__all__ = ["gradient_norm", "sharpness"]

METHOD_STYLE = {"none": ("black", "no removal"), "ies": ("tab:blue", "IES")}


def _pair(st: Study, ies_params: Optional[Dict[str, Any]], make_callbacks) -> Dict[str, list]:
    results: Dict[str, list] = {"none": [], "ies": []}
    for seed in st.seeds:
        for method in ("none", "ies"):
            cfg = st.config(method, seed, ies_params if method == "ies" else None)
            results[method].append(st.train(method, cfg, callbacks=make_callbacks()))
    return results


def _compare(results: Dict[str, list], key: str) -> Dict[str, Any]:
    """Per-method mean over epochs of ``key``, and on how many shared epochs IES is above no removal."""
    out: Dict[str, Any] = {}
    curves = {m: dict(zip(*curve(rs, key))) for m, rs in results.items()}
    for m, c in curves.items():
        vals = list(c.values())
        out[m] = {"mean": mean_or_nan(vals), "final": vals[-1] if vals else None,
                  "second_half_mean": mean_or_nan(vals[len(vals) // 2:])}
    shared = sorted(set(curves["none"]) & set(curves["ies"]))
    above = [e for e in shared if curves["ies"][e] > curves["none"][e]]
    out["ies_over_none_mean_ratio"] = (out["ies"]["mean"] / out["none"]["mean"]
                                       if finite(out["none"]["mean"]) and out["none"]["mean"] else None)
    out["epochs_compared"] = len(shared)
    out["epochs_ies_above_none"] = len(above)
    return out


def _rows(results: Dict[str, list], keys: List[str]) -> List[Dict[str, Any]]:
    rows = []
    for method, rs in results.items():
        for res in rs:
            for r in res.epochs:
                rows.append({"method": method, "seed": res.config["seed"], "epoch": r["epoch"],
                             **{k: r.get(k) for k in keys}, "active": r["active"],
                             "backprop_saved": r["backprop_saved"], "test_acc": r["test_acc"]})
    return rows


def _accuracy_summary(results: Dict[str, list]) -> Dict[str, Any]:
    return {m: {"final_test_acc": mean_or_nan(r.summary["final_test_acc"] for r in rs),
                "backprop_saved": mean_or_nan(r.summary["backprop_saved"] for r in rs)} for m, rs in results.items()}


def gradient_norm(st: Study, *, ies_params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Mean mini-batch gradient norm per epoch, IES vs no removal."""
    results = _pair(st, ies_params, lambda: [GradNormProbe()])
    summary = {"grad_norm": _compare(results, "grad_norm"), "runs": _accuracy_summary(results)}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, rs in results.items():
        col, lab = METHOD_STYLE[m]
        axes[0].plot(*curve(rs, "grad_norm"), color=col, label=lab)
        axes[1].plot(*curve(rs, "active"), color=col, label=lab)
    axes[0].set_ylabel("mean mini-batch gradient norm")
    axes[1].set_ylabel("samples backpropagated per epoch")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Gradient norm ({st.base.dataset}, {len(st.seeds)} seed(s))")
    claim = "Fig. 4: IES gives larger gradient norms than no removal (training focuses on unmastered samples)."
    return st.finish("gradnorm", _rows(results, ["grad_norm"]), summary, fig, claim)


def sharpness(st: Study, *, ies_params: Optional[Dict[str, Any]] = None, every: int = 5, subset_size: int = 512,
              iters: int = 20, rho: float = 0.05) -> Dict[str, Any]:
    """Hessian top eigenvalue and SAM value (fixed subset, every ``every`` epochs), IES vs no removal."""
    results = _pair(st, ies_params, lambda: [GradNormProbe(), SharpnessProbe(
        every=every, subset_size=subset_size, iters=iters, rho=rho, seed=0)])
    summary = {"hessian_top_eig": _compare(results, "hessian_top_eig"), "sam": _compare(results, "sam"),
               "grad_norm": _compare(results, "grad_norm"), "runs": _accuracy_summary(results),
               "settings": {"every": every, "subset_size": min(subset_size, len(st.data)), "iters": iters, "rho": rho}}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, rs in results.items():
        col, lab = METHOD_STYLE[m]
        axes[0].plot(*curve(rs, "hessian_top_eig"), color=col, marker="o", ms=3, label=lab)
        axes[1].plot(*curve(rs, "sam"), color=col, marker="o", ms=3, label=lab)
    axes[0].set_ylabel(f"Hessian top eigenvalue ({iters} power iterations)")
    axes[1].set_ylabel(f"SAM value, rho={rho:g}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Sharpness on a fixed subset of {summary['settings']['subset_size']} training samples "
                 f"({st.base.dataset}, {len(st.seeds)} seed(s))")
    claim = "Fig. 4: IES reaches flatter regions: lower Hessian top eigenvalue and SAM value than no removal."
    return st.finish("sharpness", _rows(results, ["grad_norm", "hessian_top_eig", "sam"]), summary, fig, claim)
