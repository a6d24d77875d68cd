"""A restricted unpickler for the Icentia11k torrent release.

The original (Academic Torrents) release of Icentia11k stores signals and labels
as gzipped pickles. ``pickle.load`` on an untrusted file runs arbitrary code, so
this module admits only what those files need: numpy arrays of plain numeric
dtypes and plain containers (list, tuple, dict, str, numbers). Any other global
(``os.system``, ``builtins.eval``, ...) is refused before it is looked up.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib

import numpy as np

from ecgtl.errors import DataError


def _checked_dtype(*args, **kwargs):
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refused numpy dtype {dt!r}: object arrays can hold arbitrary objects")
    return dt


def _checked_encode(obj, encoding="utf-8", errors="strict"):
    # Python 2 pickles of numpy arrays carry their raw bytes as latin-1 text.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode("latin1")


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar
    return scalar


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: _checked_dtype,
    ("_codecs", "encode"): lambda: _checked_encode,
    ("__builtin__", "bytes"): lambda: bytes,
    ("builtins", "bytes"): lambda: bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a numpy-array pickle needs."""

    def find_class(self, module: str, name: str):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays and plain containers are allowed")
        return factory()


def _check_plain(obj, depth: int = 0) -> None:
    if depth > 32:
        raise pickle.UnpicklingError("structure nested too deeply")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError("object array refused")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, depth + 1)
    elif not isinstance(obj, (str, bytes, int, float, bool, type(None), np.generic)):
        raise pickle.UnpicklingError(f"unexpected object of type {type(obj).__name__}")


def safe_load_pickle(path: str | os.PathLike):
    """Load a (optionally gzipped) pickle of numpy arrays and plain containers.

    Raises :class:`DataError` naming the file for anything else: a refused
    global (a pickle that would run code), a truncated or corrupt file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            obj = RestrictedUnpickler(io.BufferedReader(fh), encoding="latin1").load()
        _check_plain(obj)
    except pickle.UnpicklingError as exc:
        raise DataError(path, f"unsafe or invalid pickle: {exc}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(path, f"truncated or corrupt file ({type(exc).__name__}: {exc})") from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OSError) as exc:
        raise DataError(path, f"invalid pickle content ({type(exc).__name__}: {exc})") from None
    return obj
