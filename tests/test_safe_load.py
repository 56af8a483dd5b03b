"""safe_load: the restricted reader of the authors' pickled .npy answer files.

Test inputs are written with ``np.save`` of object arrays (the authors' format, so these
tests pickle) or as hand-assembled pickle streams; nothing is ever read back with
``allow_pickle=True``.
"""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy_format

from qaclims.core.errors import DataError
from qaclims.qape.safe_load import load_npy_dict

AUTHORS = {
    "2007_000032": {
        "aeroplane": {
            "vqa": [("What kind of {} is in the photo?", "jet"), ("what is under the {}?", "")],
            "answers": ["jet", ""],
        },
        "person": {"vqa": [("What kind of {} is in the photo?", "pilots")], "answers": ["pilot"]},
    },
    "2007_000039": {"tv monitor": {"vqa": [], "answers": []}},
}


def write_stream(path: Path, stream: bytes) -> Path:
    """A 0-d object ``.npy`` header followed by an arbitrary pickle stream."""
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(stream)
    return path


def test_authors_format_round_trip(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array(AUTHORS, dtype=object))
    got = load_npy_dict(tmp_path / "a.npy")
    assert got == AUTHORS
    assert type(got["2007_000032"]["aeroplane"]["vqa"][0]) is tuple


def test_numpy1_module_names_load(tmp_path: Path) -> None:
    """Files saved by NumPy 1.x name ``numpy.core.multiarray`` (protocol 3)."""
    stream = pickle.dumps(np.array(AUTHORS, dtype=object), protocol=3)
    assert b"numpy._core.multiarray" in stream
    old = stream.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert load_npy_dict(write_stream(tmp_path / "old.npy", old)) == AUTHORS


class MakeDir:
    """Pickles as a call of ``os.mkdir(target)``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.target),))


class Exec:
    """Pickles as a call of ``builtins.exec(code)`` that would create a folder."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (builtins.exec, (f"import os; os.mkdir({str(self.target)!r})",))


@pytest.mark.parametrize(("payload", "name"), [(MakeDir, "mkdir"), (Exec, "builtins.exec")])
def test_refuses_a_pickle_that_would_call_a_function(
    tmp_path: Path, payload: type, name: str
) -> None:
    target = tmp_path / "pwned"
    evil = {"2007_000032": {"aeroplane": {"vqa": [payload(target)], "answers": []}}}
    np.save(tmp_path / "evil.npy", np.array(evil, dtype=object))
    assert name.encode().split(b".")[-1] in (tmp_path / "evil.npy").read_bytes()
    with pytest.raises(DataError, match=rf"evil\.npy: refused .*refused global .*{name}"):
        load_npy_dict(tmp_path / "evil.npy")
    assert not target.exists()


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        # calling the ndarray stand-in directly: ndarray((5,))
        (b"\x80\x03cnumpy\nndarray\nK\x05\x85R.", "not callable"),
        # a huge placeholder array: _reconstruct(ndarray, (10**9,), b"b")
        (
            b"\x80\x03cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            b"J\x00\xca\x9a\x3b\x85C\x01b\x87R.",
            "refused array reconstruction",
        ),
        # any dtype but object: dtype("f8", False, True)
        (b"\x80\x03cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R.", "refused dtype 'f8'"),
    ],
)
def test_allowed_globals_do_nothing_else(tmp_path: Path, stream: bytes, why: str) -> None:
    with pytest.raises(DataError, match=why):
        load_npy_dict(write_stream(tmp_path / "x.npy", stream))


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ({"img": {"cls": {"vqa": [("q", 3)]}}}, "refused value of type int at '/img/cls/vqa"),
        ({"img": {"cls": np.zeros(2)}}, "refused dtype"),
        ({1: "a"}, "dict key 1"),
        (["not", "a", "dict"], "expected a dict"),
    ],
)
def test_only_dicts_lists_tuples_strings(tmp_path: Path, obj: Any, why: str) -> None:
    arr = np.empty((), dtype=object)
    arr[()] = obj
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(DataError, match=why):
        load_npy_dict(tmp_path / "x.npy")


def test_not_an_object_scalar(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.zeros(3))
    with pytest.raises(DataError, match="expected a 0-d object array"):
        load_npy_dict(tmp_path / "f.npy")
    (tmp_path / "t.npy").write_text("hello")
    with pytest.raises(DataError, match="not a readable .npy"):
        load_npy_dict(tmp_path / "t.npy")
    with pytest.raises(DataError, match="missing answer file"):
        load_npy_dict(tmp_path / "none.npy")
