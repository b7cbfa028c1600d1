"""Sample-selection methods behind one interface; ``build_policy(name, ...)`` builds any by name."""

from .base import POLICIES, SelectionPolicy, build_policy, policy_names, policy_params, register_policy
from .ies import IESPolicy, NoRemoval

__all__ = ["POLICIES", "SelectionPolicy", "build_policy", "policy_names", "policy_params", "register_policy",
           "IESPolicy", "NoRemoval"]
