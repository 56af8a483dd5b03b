"""Pieces every training stage shares: seeding, poly learning rate, resume state,
weights I/O, (optional) DistributedDataParallel set-up, and a loss history table.

Resume states live outside the rule's declared outputs (Snakemake deletes those before a
rerun), are written atomically, and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from qaclims.core.io import atomic_path, files_digest, write_parquet

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded the same."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def poly_factor(step: int, max_steps: int, power: float = 0.9) -> float:
    """Poly schedule ``(1 - step / max_steps) ** power``, in [0, 1]."""
    return float(max(0.0, 1.0 - step / max(1, max_steps)) ** power)


def set_poly_lr(
    optimizer: torch.optim.Optimizer, step: int, max_steps: int, power: float = 0.9
) -> None:
    """Set each param group's lr to its ``initial_lr`` times the poly factor at ``step``."""
    f = poly_factor(step, max_steps, power)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
        g["lr"] = g["initial_lr"] * f


def fingerprint(cfg: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable mapping (used to refuse stale resume states
    and partial folders): give it everything that shapes the result -- the settings and the
    content digests of the inputs (:func:`files_digest`,
    :func:`qaclims.artifacts.weights.tensors_digest`)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def inputs_digest(paths: Sequence[str | Path]) -> str:
    """Content digest of input files: weights (``.safetensors``) by their tensors
    (:func:`qaclims.artifacts.weights.tensors_digest`), anything else by its bytes."""
    from qaclims.artifacts.weights import tensors_digest

    parts = [
        tensors_digest(p) if Path(p).suffix == ".safetensors" else files_digest([p]) for p in paths
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass
class ResumeState:
    """Where a training loop saves the state it continues from after a crash, and the
    fingerprint of the settings and inputs it belongs to (when to save:
    :class:`qaclims.training.loop.Plan`)."""

    path: Path
    fingerprint: str

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None if absent or saved under a different config."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a resume state")
        except Exception as e:  # truncated, garbage, pickled code: start over, say so
            log.warning("discarding resume state %s: unreadable (%s); starting over", self.path, e)
            self.path.unlink(missing_ok=True)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning(
                "discarding resume state %s: it was saved under other settings or inputs",
                self.path,
            )
            return None
        log.info("resuming from %s at step %d", self.path, state["step"])
        return dict(state)

    def save(self, step: int, **parts: Any) -> None:
        """Atomically save ``parts`` (state dicts, RNG states...) with ``step``."""
        with atomic_path(self.path, suffix=".pt") as tmp:
            torch.save({"fingerprint": self.fingerprint, "step": step, **parts}, tmp)

    def save_training(
        self,
        step: int,
        model_state: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        history: History,
        **extra: Any,
    ) -> None:
        """Save a training loop's state: model tensors, optimizer, RNG states, history."""
        self.save(
            step,
            model=dict(model_state),
            optimizer=optimizer.state_dict(),
            rng=rng_state(),
            history=history.as_tensor_state(),
            **extra,
        )

    def restore_training(
        self, optimizer: torch.optim.Optimizer, history: History
    ) -> dict[str, Any] | None:
        """Load what :meth:`save_training` wrote into ``optimizer``, the RNGs and ``history``.

        Returns the state (its ``"model"`` and ``"step"`` are for the caller), or None when
        there is nothing to continue from.
        """
        state = self.load()
        if state is None:
            return None
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        history.rows = History.from_tensor_state(state["history"]).rows
        return state

    def clear(self) -> None:
        """Remove the state once the final outputs are written."""
        self.path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """The torch / NumPy / Python RNG states as tensors and plain types (pickle-free)."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor([x for x in random.getstate()[1]], dtype=torch.int64),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), 0, 0.0))
    py = tuple(int(x) for x in state["python"].tolist())
    random.setstate((3, py, None))


def save_weights(
    path: str | Path, model: nn.Module, metadata: dict[str, str] | None = None
) -> None:
    """Save ``model``'s state dict (unwrapped from DDP) as safetensors, atomically; identical
    weights and metadata give identical bytes (:func:`qaclims.artifacts.weights.write_tensors`)."""
    from qaclims.artifacts.weights import write_tensors

    write_tensors(path, unwrap(model).state_dict(), metadata)


def load_weights(path: str | Path, model: nn.Module) -> nn.Module:
    """Load safetensors weights into ``model`` strictly; every error (missing, corrupt or
    non-fitting file) raises :class:`~qaclims.core.errors.DataError` naming the file and the
    keys that do not fit."""
    from qaclims.artifacts.weights import load_into

    return load_into(model, path)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class DistInfo:
    """Process-group facts; ``world == 1`` means plain single-process training."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun process group if ``WORLD_SIZE > 1``; pick this rank's device.

    ``device`` is ``"cpu"`` or ``"cuda:0"`` (see :func:`qaclims.core.devices.torch_device`); under
    torchrun each rank uses ``cuda:LOCAL_RANK``. Backend: nccl on GPU, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def per_rank_batch(global_batch: int, world: int) -> int:
    """Per-process batch so the global batch stays fixed whatever the GPU count."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
    return global_batch // world


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class History:
    """Rows of training figures saved as a Parquet table. One convention for every stage:
    ``step`` is the number of optimiser steps done when the row was recorded (1-based; a
    row per step, or per log window with the window's last step), ``epoch`` 0-based."""

    def __init__(self, rows: list[dict[str, float]] | None = None):
        self.rows: list[dict[str, float]] = list(rows or [])

    def add(self, **row: float) -> None:
        self.rows.append({k: float(v) for k, v in row.items()})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def save(self, path: str | Path) -> None:
        write_parquet(path, self.frame())

    def as_tensor_state(self) -> dict[str, Any]:
        """Pickle-free form for a resume state: column names and a float64 tensor."""
        df = self.frame()
        return {"cols": list(df.columns), "values": torch.tensor(df.to_numpy(dtype=np.float64))}

    @classmethod
    def from_tensor_state(cls, state: Mapping[str, Any]) -> History:
        cols = list(state["cols"])
        vals = state["values"].numpy()
        return cls([dict(zip(cols, map(float, r), strict=True)) for r in vals])
