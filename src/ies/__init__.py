"""Instance-dependent Early Stopping (IES, ICLR 2025) for PyTorch.

Stop backpropagating samples the model has mastered: a sample whose loss has stopped
changing (second-order difference near zero) sits out of backprop until it changes
again. See README.md for the five-line integration.

Public API: :class:`IES` (the tracker), :class:`IESConfig` (its one configuration),
:class:`ActiveSampler` and :class:`IndexedDataset` (the data side), :class:`EpochStats`,
:class:`DistributedIES`, :func:`probe_losses` (the forward-only pass), and the rule's pure
functions in :mod:`ies.criterion`.
"""

from .accounting import EpochStats
from .config import IESConfig
from .dataset import IndexedDataset
from .distributed import DistributedIES
from .probing import probe_losses
from .sampler import ActiveSampler
from .ieswarning import IESWarning
from .tracker import IES

__version__ = "0.2.0"

__all__ = [
    "IES",
    "IESConfig",
    "IESWarning",
    "EpochStats",
    "ActiveSampler",
    "IndexedDataset",
    "DistributedIES",
    "probe_losses",
    "__version__",
]
