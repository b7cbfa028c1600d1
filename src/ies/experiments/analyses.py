"""Run the paper's analyses by name: the engine behind ``ies analyze`` (its command line is
:mod:`ies.cli.analyze`).

Each analysis writes ``<what>.png``, ``<what>.csv`` (the plotted numbers, per epoch and seed),
``<what>.json`` (summary, claim, command, config) and one run folder per training run under
``runs/``; ``all`` runs every analysis into ``OUT/<what>/`` and indexes them in ``analyses.json``.

Example:
    >>> base = RunConfig(dataset="mnist1d", train_size=2000, epochs=30).resolved()
    >>> # not run here (30 epochs of training); tests/analyses runs ies analyze at a tiny size:
    >>> data = load_run_data(base)  # doctest: +SKIP
    >>> index = run_analyses("gradnorm", base=base, data=data, out=Path("runs/gn"), command="(from code)")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from .analysis import (Study, cv_of_differences, forgetting, gradient_norm, label_noise, mastery_over_time,
                       sharpness, transfer)
from .analysis.robustness import NoiseSetting
from .config import RunConfig
from .data import TensorData
from .grid import Progress, no_progress
from .tables import write_json

__all__ = ["ANALYSES", "DESCRIPTIONS", "AnalysisOptions", "run_analysis", "run_analyses", "headline"]

ANALYSES = ("mastery", "cv", "gradnorm", "sharpness", "forgetting", "noise", "transfer")

DESCRIPTIONS = {
    "mastery": "samples meeting the order 0-3 criterion per epoch, removed vs kept training (Fig. 2)",
    "cv": "coefficient of variation across samples of order 0-3 loss differences, SGD and Adam (Fig. 3)",
    "gradnorm": "mean mini-batch gradient norm per epoch, IES vs no removal (Fig. 4)",
    "sharpness": "Hessian top eigenvalue and SAM value every few epochs, IES vs no removal (Fig. 4)",
    "forgetting": "are the first samples removed forgotten? loss/accuracy and re-inclusions (App. H)",
    "noise": "symmetric and instance-dependent label noise, IES vs no removal (App. G)",
    "transfer": "pretrain with/without IES, fine-tune only the head on other classes (Table 3)",
    "all": "every analysis, each into OUT/<name>/",
}


@dataclass(frozen=True)
class AnalysisOptions:
    """The analyses' own settings (the run configuration is a :class:`RunConfig`); these defaults are
    the command line's, and the parser in :mod:`ies.cli.analyze` reads them from here."""

    orders: Sequence[int] = (0, 1, 2, 3)  # mastery, cv: difference orders
    threshold: float = 1e-3  # mastery: criterion threshold delta
    optimizers: Sequence[str] = ("sgd", "adam")  # cv
    lr: Optional[float] = None  # cv: lr of the non-SGD optimizers (None: their defaults)
    sgd_lr: float = 0.1  # cv: lr of SGD (the paper's; ~100x Adam's, so one lr cannot serve both)
    every: int = 5  # sharpness: measure every K epochs
    subset: int = 512  # sharpness: fixed training subset size
    iters: int = 20  # sharpness: power iterations
    rho: float = 0.05  # sharpness: SAM radius
    fraction: float = 0.05  # forgetting: first fraction removed
    at_epochs: Optional[Sequence[int]] = None  # forgetting: table epochs (None: 1, every 10th, the last)
    control: bool = True  # forgetting: follow the same samples in a no-removal run
    settings: Sequence[NoiseSetting] = (("symmetric", 0.2, None), ("symmetric", 0.4, None),
                                        ("instance", 0.2, None), ("instance", 0.4, None))  # noise
    dd_rate: float = 0.1  # noise: symmetric rate of the double-descent setting, 0 to skip
    dd_epochs: Optional[int] = None  # noise: its epochs (None: twice the run's)
    noise_seed: int = 0  # noise: seed of the noisy labels
    source: Sequence[int] = (0, 1, 2, 3, 4)  # transfer: pretraining classes
    target: Sequence[int] = (5, 6, 7, 8, 9)  # transfer: fine-tuning classes
    head_epochs: Sequence[int] = (1, 5)  # transfer: head fine-tuning epochs
    head_lr: Optional[float] = None  # transfer: Adam lr of the head (None: the run's lr for Adam, else 1e-3)


def _noise_settings(o: AnalysisOptions, epochs: int) -> list:
    dd = [("symmetric", float(o.dd_rate), o.dd_epochs or 2 * epochs)] if o.dd_rate and o.dd_rate > 0 else []
    return [*o.settings, *dd]


_RUNNERS: Dict[str, Callable[[Study, AnalysisOptions, Dict[str, Any]], Dict[str, Any]]] = {
    "mastery": lambda st, o, p: mastery_over_time(st, orders=o.orders, threshold=o.threshold, ies_params=p),
    "cv": lambda st, o, p: cv_of_differences(st, optimizers=list(o.optimizers), orders=o.orders, lr=o.lr,
                                             sgd_lr=o.sgd_lr),
    "gradnorm": lambda st, o, p: gradient_norm(st, ies_params=p),
    "sharpness": lambda st, o, p: sharpness(st, ies_params=p, every=o.every, subset_size=o.subset, iters=o.iters,
                                            rho=o.rho),
    "forgetting": lambda st, o, p: forgetting(st, fraction=o.fraction, at_epochs=o.at_epochs, ies_params=p,
                                              control=o.control),
    "noise": lambda st, o, p: label_noise(st, settings=_noise_settings(o, int(st.base.epochs)),
                                          noise_seed=o.noise_seed, ies_params=p),
    "transfer": lambda st, o, p: transfer(st, source=o.source, target=o.target, head_epochs=o.head_epochs,
                                          head_lr=o.head_lr, ies_params=p),
}


def run_analysis(name: str, study: Study, options: AnalysisOptions = AnalysisOptions(),
                 ies_params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Run one analysis into ``study.out``; returns its payload (what ``<name>.json`` holds)."""
    if name not in _RUNNERS:
        raise ValueError(f"unknown analysis {name!r}; choose one of {', '.join(ANALYSES)}")
    return _RUNNERS[name](study, options, dict(ies_params or {}))


def _mastered(d: Mapping[Any, Any]) -> str:
    return ", ".join(f"o{k}={v['final_mastered']:.0f}" for k, v in d.items())


def _none_vs_ies(s: Mapping[str, Any], key: str) -> str:
    return f"{key}: none {s[key]['none']['mean']:.4g}, ies {s[key]['ies']['mean']:.4g}"


_HEADLINES: Dict[str, Callable[[Mapping[str, Any]], str]] = {
    "mastery": lambda s: f"removed final mastered {_mastered(s['removed'])}; kept {_mastered(s['kept'])}",
    "cv": lambda s: "; ".join(f"{o}: " + ", ".join(f"o{k[5:]}={v['mean_cv_diff']:.2f}" for k, v in d.items()
                                                   if k.startswith("order")) for o, d in s["by_optimizer"].items()),
    "gradnorm": lambda s: _none_vs_ies(s, "grad_norm"),
    "sharpness": lambda s: "; ".join(_none_vs_ies(s, k) for k in ("hessian_top_eig", "sam")),
    "forgetting": lambda s: (f"group re-included mean {s['group_reincluded_mean']:.2f}, max {s['group_reincluded_max']}; "
                             f"last-epoch group loss {s['at_epochs'][-1]['group_loss']:.4g} vs all "
                             f"{s['at_epochs'][-1]['all_loss']:.4g}"),
    "noise": lambda s: "; ".join(f"{n}: none {v['none']['best_test_acc']:.1f}%, ies {v['ies']['best_test_acc']:.1f}% "
                                 f"(saved {100 * v['ies']['backprop_saved']:.0f}%)" for n, v in s["settings"].items()),
    "transfer": lambda s: "; ".join(f"{k}: none {s['none'][k]:.1f}%, ies {s['ies'][k]:.1f}%"
                                    for k in s["none"] if k.startswith("transfer_acc")),
}


def headline(name: str, summary: Mapping[str, Any]) -> str:
    """One line of an analysis's main numbers, for the terminal ("" where a number is missing)."""
    try:
        return _HEADLINES[name](summary)
    except (KeyError, TypeError, ValueError, IndexError):
        return ""


def run_analyses(what: str, *, base: RunConfig, data: TensorData, out: Path, command: str,
                 seeds: Sequence[int] = (0,), options: AnalysisOptions = AnalysisOptions(),
                 ies_params: Optional[Dict[str, Any]] = None, log: Callable[[str], None] = print,
                 progress: Progress = no_progress, allow_nonfinite: bool = False) -> Dict[str, Any]:
    """Run ``what`` (one of :data:`ANALYSES`, or ``"all"``) into ``out``; returns the index
    ``{name: {"folder", "seconds", "summary"}}``. ``command`` is recorded in every output as the
    command that made it; ``progress(epochs, description)`` gives each run's per-epoch callback;
    ``allow_nonfinite`` lets runs continue through an epoch whose losses are all NaN/inf."""
    if what != "all" and what not in ANALYSES:
        raise ValueError(f"unknown analysis {what!r}; choose one of {', '.join(ANALYSES)} or all")
    names = ANALYSES if what == "all" else (what,)
    index: Dict[str, Any] = {}
    for name in names:
        where = Path(out) / name if what == "all" else Path(out)
        study = Study(out=where, base=base, data=data, seeds=list(seeds), command=command,
                      allow_nonfinite=allow_nonfinite,
                      progress=lambda total, desc, name=name: progress(total, f"{name}: {desc}"))
        t0 = time.perf_counter()
        payload = run_analysis(name, study, options, ies_params)
        dt = time.perf_counter() - t0
        index[name] = {"folder": str(where), "seconds": dt, "summary": payload["summary"]}
        log(f"{name} ({dt:.0f}s): {headline(name, payload['summary'])} -> {where / (name + '.png')}")
    if what == "all":
        write_json(Path(out) / "analyses.json", {"command": command, "analyses": index})
    return index

