"""Weights files: the one place that writes, reads, loads and digests safetensors files.

- :func:`write_tensors` writes ``name -> tensor`` with metadata folded into one sorted JSON
  entry (``__metadata__: {"qaclims": "..."}``): safetensors writes several metadata entries
  in a random order, which made the bytes of identical trainings differ.
- :func:`read_tensors` reads a file; a missing, truncated or foreign file raises
  :class:`~qaclims.core.errors.DataError` naming it.
- :func:`load_into` loads a state dict strictly, listing missing / unexpected keys and
  shape mismatches with the file's name.
- :func:`tensors_digest` fingerprints a file by its tensors (names, dtypes, shapes,
  values), not by its bytes, so it also identifies weights written by another version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from qaclims.core.errors import DataError
from qaclims.core.io import PathLike, atomic_path

META_KEY = "qaclims"
NAMES_IN_ERROR = 6


def write_tensors(
    path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` (made contiguous, on the CPU) as safetensors, atomically; the same
    tensors and metadata always give the same bytes."""
    from safetensors.torch import save_file

    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {META_KEY: json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(data, str(tmp), metadata=meta)


def read_metadata(path: PathLike) -> dict[str, str]:
    """The metadata :func:`write_tensors` stored (``{}`` if none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise DataError(f"weights file {path} is not a readable safetensors file: {e}") from e
    return dict(json.loads(meta[META_KEY])) if META_KEY in meta else dict(meta)


def read_tensors(path: PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; errors name the file (missing, truncated, garbage)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing weights file: {p}")
    try:
        return load_file(str(p))
    except Exception as e:  # SafetensorError, OSError, ...: never a bare library error
        raise DataError(f"weights file {p} is not a readable safetensors file: {e}") from e


def read_pth_state(path: PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` state dict, read with ``weights_only=True`` (a
    ``{"state_dict": ...}`` wrapper and a DDP ``module.`` prefix are removed). A missing
    file, a corrupt one, pickled code or anything but a dict of tensors raises
    :class:`DataError` naming ``what`` and the file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing {what} {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt zip, a pickle naming code, ...
        raise DataError(f"{what} {p}: not a tensor state dict ({e})") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{what} {p}: expected a dict of tensors, got {type(obj).__name__}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def check_fit(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    where: str,
    what: str = "weights file",
    network: str = "network",
) -> None:
    """Raise :class:`DataError` naming ``what where`` and ``network`` if ``state`` does not
    have exactly ``target``'s keys and shapes (``num_batches_tracked`` may be absent)."""
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    bad = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    if missing or unexpected or bad:
        n = NAMES_IN_ERROR
        raise DataError(
            f"{what} {where} does not fit the {network}: missing {len(missing)} "
            f"{missing[:n]}, unexpected {len(unexpected)} {unexpected[:n]}, shape "
            f"mismatches {bad[:n]}"
        )


def load_into(model: nn.Module, path: PathLike) -> nn.Module:
    """Load a safetensors state dict into ``model`` (unwrapped from DDP) strictly; every
    error names the file and lists the keys that do not fit."""
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    state = read_tensors(path)
    check_fit(state, net.state_dict(), str(path))
    net.load_state_dict(state, strict=False)  # num_batches_tracked may be absent
    return model


def tensors_digest(path: PathLike) -> str:
    """sha256 over the file's tensors in name order (name, dtype, shape, values)."""
    h = hashlib.sha256()
    for name, t in sorted(read_tensors(path).items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
