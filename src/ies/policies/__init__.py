"""Sample-selection methods behind one interface; ``build_policy(name, ...)`` builds any by name.

Importing this package registers every method: ``ies`` and ``none`` (the paper's method and
baseline) and the baselines it is compared with (``random``, ``infobatch``, ``early-stop``,
``selective-backprop`` and Composer's variant ``selective-backprop-composer``, ``dihcl``,
``efficient-train``); see ``docs/methods.md``.
"""

from .base import POLICIES, SelectionPolicy, build_policy, policy_names, policy_params, register_policy
from .ies import IESPolicy, NoRemoval
from .random_remove import RandomRemove
from .infobatch import InfoBatch
from .early_stop import EarlyStopping
from .selective_backprop import ComposerSelectiveBackprop, SelectiveBackprop
from .dihcl import DIHCL
from .efficient_train import EfficientTrain

__all__ = ["POLICIES", "SelectionPolicy", "build_policy", "policy_names", "policy_params", "register_policy",
           "IESPolicy", "NoRemoval", "RandomRemove", "InfoBatch", "EarlyStopping", "SelectiveBackprop", "ComposerSelectiveBackprop", "DIHCL",
           "EfficientTrain"]
