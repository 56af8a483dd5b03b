"""Restricted reader for pickled NumPy ``.npy`` files holding a nested dict of strings.

This is the ONE place in the project that reads pickled data. It exists only to import
the QA-CLIMS authors' released VQA answer files (``voc_vqa_fg_blip.npy`` and friends),
which ``np.save`` wrote as a 0-d object array around a dict of the form
``{image_name: {class_name: {"vqa": [(question, answer), ...], "answers": [str, ...]}}}``.

Such a file is a ``.npy`` header followed by a pickle stream. The stream may only name
the three globals that NumPy's own pickling of an object array uses, each one wrapped
so that it can do nothing but rebuild that array:

* ``numpy(._core|.core).multiarray._reconstruct``: only ``(ndarray, (0,), b"b")``, the
  empty placeholder that ``ndarray.__setstate__`` then fills in;
* ``numpy.dtype``: only the object dtype (``"O8"`` / ``"O4"``);
* ``numpy.ndarray``: a non-callable token that ``_reconstruct`` accepts as its class.

Every other global (``os.system``, ``builtins.eval``, any class) is refused before it is
looked up, so no function named by the file is ever called. After loading, the object
must be a 0-d object array whose item is built of ``dict`` (with ``str`` keys), ``list``,
``tuple`` and ``str`` only; anything else is refused. All refusals raise
:class:`~qaclims.core.errors.DataError` naming the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from qaclims.core.errors import DataError
from qaclims.core.io import PathLike

# How deep the loaded structure may nest (the authors' files nest 5 levels).
MAX_DEPTH = 32

Nested = dict[str, Any] | list[Any] | tuple[Any, ...] | str


class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` inside the stream; calling it is impossible."""

    def __repr__(self) -> str:
        return "<numpy.ndarray token>"


_NDARRAY = _NdarrayToken()


def _reconstruct(subtype: object, shape: object, typecode: object) -> np.ndarray:
    """NumPy's empty-array placeholder, and nothing else: ``(ndarray, (0,), b"b")``."""
    if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError(
            f"refused array reconstruction {subtype!r}, {shape!r}, {typecode!r}"
        )
    return np.ndarray((0,), dtype=np.int8)


def _object_dtype(obj: object, align: object = False, copy: object = False) -> np.dtype[Any]:
    """``numpy.dtype`` restricted to the object dtype."""
    if obj not in ("O8", "O4") or not isinstance(align, bool) or not isinstance(copy, bool):
        raise pickle.UnpicklingError(f"refused dtype {obj!r}: only the object dtype is allowed")
    return np.dtype(obj, align=align, copy=copy)


_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "dtype"): _object_dtype,
    ("numpy", "ndarray"): _NDARRAY,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of NumPy's object-array pickling."""

    def find_class(self, module: str, name: str) -> Any:
        """The wrapped stand-in for an allowed global; refuse any other."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids are never valid in these files."""
        raise pickle.UnpicklingError("refused persistent id")


def _read_header(f: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype from the ``.npy`` header (parsed with ``ast.literal_eval``)."""
    try:
        version = npy_format.read_magic(f)
        readers: dict[tuple[int, int], Callable[..., Any]] = {
            (1, 0): npy_format.read_array_header_1_0,
            (2, 0): npy_format.read_array_header_2_0,
        }
        if version not in readers:
            raise ValueError(f"unsupported .npy version {version}")
        shape, _, dtype = readers[version](f)
    except ValueError as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from e
    return tuple(shape), dtype


def _validate(obj: Any, path: Path, where: str = "", depth: int = 0) -> None:
    """Raise :class:`DataError` unless ``obj`` is built of dict/list/tuple/str only."""
    if depth > MAX_DEPTH:
        raise DataError(f"{path}: structure nests deeper than {MAX_DEPTH} levels at {where!r}")
    if type(obj) is str:
        return
    if type(obj) is dict:
        for k, v in obj.items():
            if type(k) is not str:
                raise DataError(f"{path}: dict key {k!r} at {where!r} is not a string")
            _validate(v, path, f"{where}/{k}", depth + 1)
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _validate(v, path, f"{where}[{i}]", depth + 1)
        return
    raise DataError(
        f"{path}: refused value of type {type(obj).__name__} at {where or '/'!r}; "
        "only dicts, lists, tuples and strings are allowed"
    )


def load_npy_dict(path: PathLike) -> dict[str, Any]:
    """Load a pickled 0-d object ``.npy`` holding a dict, refusing anything else.

    Returns the dict (keys ``str``; values nested ``dict``/``list``/``tuple``/``str``).
    A missing file, a non-object or non-scalar array, a refused global, a corrupt stream
    or a value of another type raises :class:`DataError` naming ``path``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing answer file: {p}")
    with open(p, "rb") as f:
        shape, dtype = _read_header(f, p)
        if dtype != np.dtype(object) or shape != ():
            raise DataError(f"{p}: expected a 0-d object array, got shape {shape} dtype {dtype}")
        try:
            arr = RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{p}: refused or corrupt pickle stream ({e})") from e
    if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(object) or arr.shape != ():
        raise DataError(f"{p}: the stream did not rebuild a 0-d object array")
    obj = arr.item()
    if type(obj) is not dict:
        raise DataError(f"{p}: expected a dict inside the array, got {type(obj).__name__}")
    _validate(obj, p)
    return obj
