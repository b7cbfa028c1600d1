"""Framework integrations, each an optional extra that composes the core.

* :mod:`ies.integrations.lightning` (``pip install instance-early-stopping[lightning]``):
  ``IESCallback`` and ``ies_output`` for PyTorch Lightning.
* :mod:`ies.integrations.huggingface` (``pip install instance-early-stopping[huggingface]``):
  ``IESTrainer`` for ``transformers.Trainer``.

Nothing here imports a framework until you ask for one of its names.

Example:
    >>> from ies.integrations.lightning import IESCallback, ies_output
    >>> from ies.integrations import IESTrainer          # same as ies.integrations.huggingface.IESTrainer
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict, Optional

__all__ = ["require", "rule_for_run", "all_excluded_message"]  # the integrations' names load lazily: IESCallback, ies_output, IESTrainer, ...

_LAZY = {
    "IESCallback": "lightning",
    "ies_output": "lightning",
    "IESTrainer": "huggingface",
    "IESTrainerCallback": "huggingface",
    "per_sample_loss": "huggingface",
}


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` naming the extra that installs it.

    Example:
        >>> pl = require("lightning.pytorch", "lightning")
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"this IES integration needs {module.split('.')[0]!r}: pip install instance-early-stopping[{extra}]"
        ) from e


def rule_for_run(config: Any, rule: Dict[str, Any], total_epochs: Optional[int]) -> Dict[str, Any]:
    """The tracker's keyword arguments: ``config`` and ``rule`` fields, plus the run's length.

    A rule planned over the run (``target_saving``, ``anneal_fraction > 0``) needs
    ``total_epochs``; when the user gave none, the framework's planned epochs are used.

    Example:
        >>> rule_for_run(None, {"target_saving": 0.4}, 30)
        {'target_saving': 0.4, 'total_epochs': 30}
    """
    out = dict(rule)
    if config is not None:
        out["config"] = config

    def given(name: str, default: Any) -> Any:
        return rule.get(name, getattr(config, name, default))

    planned = given("target_saving", None) is not None or (given("anneal_fraction", 0.0) or 0.0) > 0
    if planned and given("total_epochs", None) is None and total_epochs is not None:
        out["total_epochs"] = int(total_epochs)
    return out


def all_excluded_message(tracker: Any, epoch: int, planned: Optional[int], framework: str) -> str:
    """What an integration says when it ends a run because the next epoch has no sample to train.

    Example:
        >>> from ies import IES
        >>> all_excluded_message(IES(10), 3, 10, "IESCallback")[:58]
        'IES: every sample is mastered after epoch 3 (threshold δ=0'
    """
    left = f"; the {planned - epoch - 1} planned epochs left would train nothing" if planned is not None else ""
    config = tracker.config
    if config.mode == "delta":
        why = f"every sample is mastered after epoch {epoch} (threshold δ={config.threshold:g})"
        fix = "lower threshold to train longer"
    else:
        why = f"target mode excluded every sample after epoch {epoch} (max_excluded_fraction={config.exclusion_cap:g})"
        fix = "keep max_excluded_fraction below 1 to train every epoch"
    return (f"IES: {why}{left}, so {framework} stops training now ({fix}); its summary has the run's savings "
            "over the planned epochs")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
