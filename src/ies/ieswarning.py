"""``IESWarning``, in a module of its own so every part of the core can warn without importing the tracker."""

from __future__ import annotations

__all__ = ["IESWarning"]


class IESWarning(UserWarning):
    """A misuse that IES can survive but that makes its numbers wrong; the message says the fix."""
