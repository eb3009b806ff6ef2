"""``.npz`` files read without running pickle code from them.

``numpy.load(..., allow_pickle=True)`` unpickles object arrays, and unpickling a file can run
any code its author chose.  Some inputs legitimately hold object arrays (MeteoNet radar files
store their ``dates`` as Python ``datetime`` objects), so :func:`safe_npz` reads plain arrays
with ``allow_pickle=False`` and object arrays through an unpickler that only builds numpy
arrays, dtypes and ``datetime`` values; any other global in the pickle is refused with
:class:`UnsafeNpzError` (a ``ValueError``) before anything is called.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

#: (module, name) the object-array unpickler may resolve; everything else is refused.
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("_codecs", "encode"),
})


class UnsafeNpzError(ValueError):
    """An ``.npz`` member holds a pickle that would call something not in :data:`ALLOWED_GLOBALS`."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeNpzError(f"pickled object array refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def _header(fh) -> np.dtype:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)[2]
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)[2]
    return np.lib.format._read_array_header(fh, version)[2]  # (3, 0): no public reader


class SafeNpz:
    """A read-only mapping over the arrays of an ``.npz`` file (``files``, ``z[name]``), loaded on
    access; use as a context manager like ``numpy.load``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path)
        self._members = {n[:-4] if n.endswith(".npy") else n: n for n in self._zip.namelist()}
        self.files = list(self._members)

    def __enter__(self) -> SafeNpz:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def __getitem__(self, name: str) -> np.ndarray:
        member = self._members[name]
        with self._zip.open(member) as fh:
            dtype = _header(fh)
            if dtype.hasobject:
                try:
                    array = _RestrictedUnpickler(io.BufferedReader(fh)).load()
                except UnsafeNpzError:
                    raise
                except Exception as exc:  # truncated or malformed pickle
                    raise ValueError(f"{name}: unreadable object array ({exc})") from exc
                if not isinstance(array, np.ndarray):
                    raise UnsafeNpzError(f"{name}: pickle holds a {type(array).__name__}, not an array")
                return array
        with self._zip.open(member) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)


def safe_npz(path: str | Path) -> SafeNpz:
    """Open an ``.npz`` for reading without arbitrary unpickling (see the module docstring)."""
    return SafeNpz(path)
