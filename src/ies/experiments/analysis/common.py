"""Shared plumbing of the analyses: training a labelled run, saving it, writing CSV/JSON/PNG."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from ..config import RunConfig
from ..data import TensorData
from ..engine import EngineCallback, RunResult, run_training
from ..report import save_run

__all__ = ["Progress", "Study", "pyplot", "write_csv", "write_json", "mean_or_nan", "curve", "finite"]

Progress = Callable[[int, str], Callable[[Dict[str, Any]], None]]  # (epochs, label) -> per-epoch callback


def _no_progress(total: int, desc: str) -> Callable[[Dict[str, Any]], None]:
    return lambda row: None


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def mean_or_nan(xs: Iterable[Any]) -> float:
    vals = [float(x) for x in xs if finite(x)]
    return statistics.fmean(vals) if vals else float("nan")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, default=str))
    os.replace(tmp, path)
    return path


def write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    os.replace(tmp, path)
    return path


def curve(results: Sequence[RunResult], key: str) -> tuple:
    """Epochs and the mean over runs of ``key`` at each epoch (missing / non-finite values skipped)."""
    by: Dict[int, List[float]] = {}
    for res in results:
        for row in res.epochs:
            v = row.get(key)
            if finite(v):
                by.setdefault(int(row["epoch"]), []).append(float(v))
    es = sorted(by)
    return es, [statistics.fmean(by[e]) for e in es]


@dataclass
class Study:
    """One analysis's output folder and the runs it trains (saved under ``out/runs``)."""

    out: Path
    base: RunConfig
    data: TensorData
    seeds: Sequence[int] = (0,)
    progress: Progress = _no_progress
    command: str = ""
    log: Callable[[str], None] = print
    saved: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def config(self, method: str, seed: int, params: Optional[Dict[str, Any]] = None, **changes: Any) -> RunConfig:
        cfg = replace(self.base, method=method, seed=seed, method_params=dict(params or {}), **changes)
        return cfg.resolved()

    def train(self, label: str, cfg: RunConfig, *, data: Optional[TensorData] = None,
              callbacks: Sequence[EngineCallback] = (), keep_model: bool = False,
              extra_files: Optional[Dict[str, Callable[[Path], None]]] = None) -> RunResult:
        """Train and save ``out/runs/<label>-seed<seed>``; ``extra_files`` writers get the run folder."""
        d = data if data is not None else self.data
        res = run_training(cfg, d, on_epoch=self.progress(int(cfg.epochs), f"{label} seed {cfg.seed}"),
                           keep_model=keep_model, callbacks=list(callbacks))
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)
        run_dir = save_run(res, self.out / "runs" / f"{safe}-seed{cfg.seed}",
                           extra={"label": label, "command": self.command, "analysis": self.out.name})
        for _, writer in (extra_files or {}).items():
            writer(run_dir)
        self.saved.append(str(run_dir))
        return res

    def finish(self, name: str, rows: Sequence[Dict[str, Any]], summary: Dict[str, Any], fig: Any,
               claim: str) -> Dict[str, Any]:
        """Write ``<name>.csv`` (the numbers behind the plot), ``<name>.json`` and ``<name>.png``."""
        write_csv(self.out / f"{name}.csv", rows)
        fig.savefig(self.out / f"{name}.png", dpi=110, bbox_inches="tight")
        pyplot().close(fig)
        payload = {
            "analysis": name, "claim": claim, "command": self.command, "seeds": list(self.seeds),
            "base_config": self.base.to_dict(), "num_train_samples": len(self.data),
            "summary": summary, "runs": [os.path.relpath(p, self.out) for p in self.saved],
        }
        write_json(self.out / f"{name}.json", payload)
        return payload
