"""The paper's Table 5 from saved ``ies compare`` runs: metric best and final, samples and mini-batches saved.

The paper reports, for detection and segmentation, the best mAP / mIoU and the share of backprop
*mini-batches* saved. A mini-batch is saved when it is not formed: an epoch that backpropagates
``b`` samples in batches of ``B`` runs ``ceil(b / B)`` of them, against ``ceil(N / B)`` with no
removal. Samples saved is the engine's ``backprop_saved``; speedup (wall) is the median over seeds
of none's wall time over the method's (training plus probing, evaluation excluded), which moves
with the machine's load between runs; speedup (own timings) is the report's ``limit``,
``1 / ((1 - f) + f_p * p)`` from each run's own seconds per trained and per probed sample, which
does not.

Usage: ``python -m ies.experiments.dense.table5 OUT_DIR [OUT_DIR ...]`` (the ``--out`` folders).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..report import aggregate, load_run
from ..runs import find_runs
from ..tables import table

__all__ = ["batches_saved", "table5_rows", "format_table5", "main"]


def batches_saved(rows: Sequence[Dict[str, Any]], num_train: int, batch_size: int) -> float:
    """Share of backprop mini-batches not run, against ``ceil(N / B)`` every epoch."""
    full = len(rows) * math.ceil(num_train / batch_size)
    done = sum(math.ceil(int(r["backpropagated"]) / batch_size) for r in rows)
    return 1.0 - done / full if full else 0.0


def _mean_std(xs: List[float]) -> str:
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"


def table5_rows(out_dirs: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per method label over every complete run under ``out_dirs`` (runs of one dataset)."""
    runs = [load_run(d) for d in find_runs([Path(o) for o in out_dirs])]
    runs = [r for r in runs if r["status"] == "complete"]
    if not runs:
        raise ValueError(f"no finished run under {', '.join(out_dirs)}; run `ies compare` first")
    base = {r["label"]: r for r in aggregate(runs)}
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["label"], []).append(r)
    none = {r["config"]["seed"]: r["summary"]["final_test_acc"] for r in groups.get("none", [])}
    out = []
    for label, rs in groups.items():
        finals = [r["summary"]["final_test_acc"] for r in rs]
        deltas = [r["summary"]["final_test_acc"] - none[r["config"]["seed"]] for r in rs if r["config"]["seed"] in none]
        out.append({
            "label": label, "metric": base[label]["metric"], "seeds": len(rs), "final": _mean_std(finals),
            "best": _mean_std([max(e["test_acc"] for e in r["epochs"]) for r in rs]),
            "delta_final": statistics.fmean(deltas) if deltas else None,
            "samples_saved": base[label]["backprop_saved"],
            "batches_saved": statistics.fmean(batches_saved(r["epochs"], r["summary"]["num_train"],
                                                            r["config"]["batch_size"]) for r in rs),
            "speedup": base[label]["speedup"], "speedup_limit": base[label].get("speedup_limit"),
        })
    return out


def format_table5(rows: List[Dict[str, Any]]) -> str:
    m = rows[0]["metric"]
    head = ["method", f"final {m} (%)", f"best {m} (%)", "Δ final vs none", "backprop samples saved",
            "backprop mini-batches saved", "speedup (wall)", "speedup (own timings)", "seeds"]
    body = [[r["label"], r["final"], r["best"], "-" if r["delta_final"] is None else f"{r['delta_final']:+.2f}",
             f"{100 * r['samples_saved']:.1f}%", f"{100 * r['batches_saved']:.1f}%",
             "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
             "-" if r["speedup_limit"] is None else f"{r['speedup_limit']:.2f}x", str(r["seeds"])] for r in rows]
    return table(head, body, markdown=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    dirs = list(sys.argv[1:] if argv is None else argv)
    if not dirs:
        print(__doc__.strip().splitlines()[-1])
        return 2
    print(format_table5(table5_rows(dirs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
