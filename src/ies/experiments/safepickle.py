"""CIFAR's python-version pickles read without running code or filling memory.

Only plain data and numpy arrays are admitted (:data:`_PICKLE_GLOBALS`); ``numpy.ndarray``
stands in a pickle only as ``_reconstruct``'s first argument (so ``ndarray(shape)`` cannot
allocate any size from a few bytes), and a file larger than its format's is refused unread.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["load_pickle_restricted", "CIFAR_URL"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR_URL = CIFAR_URL


# Everything the CIFAR python-version files reference by name: numpy's array reconstructor
# (numpy < 2 pickles name numpy.core, numpy >= 2 numpy._core) with ndarray and dtype. Lists,
# dicts, bytes, str and numbers need no global. Protocol-5 re-pickles name numeric._frombuffer
# (an array from a byte buffer), and protocol <= 2 pickles written by Python 3 spell bytes as
# _codecs.encode(str, "latin1"), answered by a latin-1-only stand-in. Anything else is refused.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("", "_ndarray_token"),
    ("numpy", "dtype"): ("", "dtype"),
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to what pickle emits for bytes (latin-1 of a str)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is admitted only as (str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin1")


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` in a pickle: usable only as ``_reconstruct``'s first argument, so a
    pickle cannot call ``ndarray(shape)`` and allocate any size from a few bytes."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("numpy.ndarray may appear only inside an array's own reconstruction")


_NDARRAY = _NdarrayToken()


def _guarded_reconstruct(real: Any) -> Any:
    import numpy as np

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        if subtype is not _NDARRAY or shape != (0,):  # numpy always pickles (ndarray, (0,), b'b')
            raise pickle.UnpicklingError(f"array reconstruction with {shape!r} is not how numpy pickles arrays")
        return real(np.ndarray, shape, dtype)
    return reconstruct


def _numpy_global(submodule: str, name: str) -> Any:
    import importlib

    import numpy as np

    if name == "_ndarray_token":
        return _NDARRAY
    if not submodule:
        return getattr(np, name)
    # The private module moved from numpy.core to numpy._core in numpy 2; take whichever exists
    # (numpy 2 still answers numpy.core, with a DeprecationWarning).
    for mod in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                found = getattr(importlib.import_module(mod), name)
            return _guarded_reconstruct(found) if name == "_reconstruct" else found
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this numpy has no {submodule}.{name}")


class _ForbiddenGlobal(ValueError):
    """A pickle asked for a global outside the allow-list (the file may be crafted)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the CIFAR page says
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        where = _PICKLE_GLOBALS.get((module, name))
        if where is None:
            raise _ForbiddenGlobal(
                f"{self._path} asks to load the Python global {module}.{name}, which a CIFAR data file "
                "never contains (only numpy arrays, lists, dicts, bytes, str and numbers); refusing to "
                f"unpickle it because it could run code. Replace the file with the original from {_CIFAR_URL}"
            )
        return _numpy_global(*where)


def load_pickle_restricted(path: Union[str, Path], max_bytes: Optional[int] = None) -> Any:
    """Unpickle ``path`` admitting only plain data and numpy arrays (the CIFAR file format).

    A global outside that set (``os.system``, ``builtins.eval``, any class) is refused with a
    ``ValueError`` naming the file and the global, before it is called; a corrupt or truncated
    pickle is a ``ValueError`` naming the file. ``max_bytes``: a bigger file is refused unread.
    """
    path = Path(path)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{path} is {size:,} bytes, more than the {max_bytes:,} its CIFAR format holds; it is not "
                         f"the original file, replace it with the one from {_CIFAR_URL}")
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except _ForbiddenGlobal:
            raise
        except Exception as e:  # UnpicklingError, EOFError, and whatever a mangled opcode stream raises
            raise ValueError(
                f"{path} is not a readable pickle ({type(e).__name__}: {e}); the file is corrupt or "
                f"truncated, replace it with the original from {_CIFAR_URL}"
            ) from None
