"""Shared plumbing of the analyses: training a labelled run into its folder, writing CSV/JSON/PNG."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from ..config import RunConfig
from ..data import TensorData
from ..engine import EngineCallback, RunResult
from ..grid import Progress, no_progress, train_run
from ..plots import pyplot  # the one headless-matplotlib helper (re-exported for the analyses)
from ..runs import run_dir_name
from ..tables import write_csv, write_json

__all__ = ["Study", "pyplot", "mean_or_nan", "curve", "finite"]


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def mean_or_nan(xs: Iterable[Any]) -> float:
    vals = [float(x) for x in xs if finite(x)]
    return statistics.fmean(vals) if vals else float("nan")


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
    progress: Progress = no_progress
    command: str = ""
    allow_nonfinite: bool = False
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
        """Train into ``out/runs/<label>-seed<seed>``; ``extra_files`` writers then get the run folder."""
        run_dir = self.out / "runs" / run_dir_name(label, cfg.seed)
        res = train_run(cfg, run_dir, data=self.data if data is None else data, callbacks=list(callbacks),
                        on_epoch=self.progress(int(cfg.epochs), f"{label} seed {cfg.seed}"), keep_model=keep_model,
                        allow_nonfinite=self.allow_nonfinite,
                        extra={"label": label, "command": self.command, "analysis": self.out.name})
        for writer in (extra_files or {}).values():
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
