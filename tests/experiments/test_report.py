"""The speedup limit the report prints beside the measured speedup (issue 11)."""

import pytest

from ies.experiments.report import speedup_limit


def row(trained: int, probed: int, train_s: float, probe_s: float) -> dict:
    return {"backpropagated": str(trained), "probed": str(probed), "train_seconds": str(train_s),
            "probe_seconds": str(probe_s)}  # metrics.csv gives strings


@pytest.mark.parametrize(
    "rows,want",
    [
        ([row(100, 0, 1.0, 0.0)] * 4, 1.0),  # no removal
        ([row(100, 0, 1.0, 0.0), row(50, 0, 0.5, 0.0)], 1 / 0.75),  # free probing: 1 / (1 - f)
        ([row(100, 0, 1.0, 0.0), row(50, 50, 0.5, 0.25)], 1 / (0.75 + 0.25 * 0.5)),  # p = 0.5
        ([], None),
    ],
)
def test_speedup_limit(rows, want) -> None:
    got = speedup_limit(rows, 100)
    assert got == pytest.approx(want) if want is not None else got is None


def test_runs_without_the_columns_have_no_limit() -> None:
    assert speedup_limit([{"epoch": "1"}], 100) is None
    assert speedup_limit([row(1, 0, 1.0, 0.0)], None) is None
