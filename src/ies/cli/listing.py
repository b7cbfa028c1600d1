"""``ies list``: datasets, models, methods (with their parameters) and optimizers."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    sub.add_parser("list", help="list datasets, models, methods and optimizers")


def run(args: argparse.Namespace) -> int:
    from ..experiments.config import OPTIMIZERS
    from ..experiments.data import DATASETS
    from ..experiments.models import MODELS
    from ..policies import policy_names, policy_params

    print("datasets:  " + ", ".join(DATASETS))
    print("models:    " + ", ".join(sorted(MODELS)))
    print("methods:")
    for n in policy_names():
        print(f"  {n}: " + ", ".join(f"{k}={v!r}" for k, v in policy_params(n).items()))
    print("optimizers:")
    for k, v in OPTIMIZERS.items():
        print(f"  {k}: {v}")
    return 0
