"""Instance-dependent Early Stopping (IES, ICLR 2025) for PyTorch.

Stop backpropagating samples the model has mastered: a sample whose loss has stopped
changing (second-order difference near zero) sits out of backprop until it changes
again. See README.md for the five-line integration.
"""

from .criterion import history_length, kth_difference, mastered_mask, mastery_score, moving_average_abs
from .dataset import IndexedDataset
from .distributed import DistributedIES
from .sampler import ActiveSampler, active_order
from .scoring import score_losses
from .tracker import IES, EpochStats, IESConfig, InstanceEarlyStopping

__version__ = "0.1.0"

__all__ = [
    "IES",
    "InstanceEarlyStopping",
    "DistributedIES",
    "IESConfig",
    "EpochStats",
    "ActiveSampler",
    "IndexedDataset",
    "score_losses",
    "active_order",
    "history_length",
    "kth_difference",
    "moving_average_abs",
    "mastery_score",
    "mastered_mask",
    "__version__",
]
