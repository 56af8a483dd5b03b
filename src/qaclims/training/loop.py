"""The one training loop of every training stage: build, step, log, save, resume, finish.

A stage builds its network, optimizer and data, then hands them to a :class:`Trainer` with a
:class:`Plan` (how many steps, how often to log and save) and a step function (one optimiser
step on one batch, returning its loss terms). The trainer owns everything else:

- the learning rate: the poly schedule set before each step (``Plan.poly_power``), or a
  ``torch.optim.lr_scheduler`` stepped after it;
- the history: one row per optimiser step, ``step`` = steps done (1-based), ``epoch``
  (0-based), the step's terms reduced over the processes (:attr:`Plan.sum_terms` summed,
  the others averaged), and ``lr`` (the rate the step used);
- log lines every ``log_every`` steps (mean terms over the window, images per second; terms
  named ``group:key``, e.g. per-class counts, are recorded but not logged), a progress bar
  on rank 0, and an optional call at each epoch end;
- the resume state: saved every ``resume_every`` steps, at each epoch end and when stopped
  at ``max_steps`` (tests), restored by :meth:`Trainer.restore` (network, optimizer,
  scheduler, RNGs, history; a state from other settings or inputs is discarded, see
  :class:`~qaclims.training.ResumeState`);
- the finish: rank 0 writes the outputs, the history table, and removes the resume state.

Every stage's data order comes from :class:`~qaclims.training.sampling.StepBatches`, so a
batch is a function of the seed and the step only and a resumed run ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from qaclims.core.errors import DataError
from qaclims.training import DistInfo, History, ResumeState, set_poly_lr, unwrap

log = logging.getLogger(__name__)

B = TypeVar("B")

#: what a step function returns: its loss terms (floats or 0-d tensors) on this process
Terms = Mapping[str, float | torch.Tensor]


@dataclass(frozen=True)
class Plan:
    """How long a training runs and how often it reports.

    name: the stage (log lines, progress bar). total: optimiser steps of the whole training.
    per_epoch: steps per pass over the data (``epoch`` column, epoch-end saves).
    images_per_step: global batch (images/s in log lines). log_every / resume_every: steps
    between log lines / resume-state saves. poly_power: ``lr = lr0 (1 - step/total)^power``
    set before each step, or None when a scheduler sets the rate. sum_terms: terms summed
    over the processes (counts, or a loss each process holds a share of; ``"g"`` also names
    every ``"g:key"``); others averaged.
    """

    name: str
    total: int
    per_epoch: int
    images_per_step: int
    log_every: int
    resume_every: int
    poly_power: float | None = 0.9
    sum_terms: tuple[str, ...] = ()


class Trainer:
    """Runs a :class:`Plan` over a model and optimizer (see the module docstring).

    ``model`` may be wrapped in DDP; its unwrapped state dict is what is saved.
    ``resume``: where the resume state lives (None: the training cannot resume).
    ``keep_key(name) -> bool`` picks the state-dict entries the resume state holds (e.g. only
    the trained head); the others must be rebuilt identically by the stage.
    """

    def __init__(
        self,
        plan: Plan,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        resume: ResumeState | None,
        dist: DistInfo | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        keep_key: Callable[[str], bool] | None = None,
    ):
        self.plan, self.model, self.optimizer, self.resume = plan, model, optimizer, resume
        self.dist = dist if dist is not None else DistInfo()
        self.scheduler = scheduler
        self.keep_key = keep_key or (lambda _: True)
        self.history = History()

    # ------------------------------------------------------------------ resume

    def _model_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in unwrap(self.model).state_dict().items() if self.keep_key(k)}

    def save(self, step: int) -> None:
        """Save the resume state at ``step`` (rank 0)."""
        if not self.dist.main or self.resume is None:
            return
        extra: dict[str, Any] = {}
        if self.scheduler is not None:
            extra["scheduler"] = self.scheduler.state_dict()
        self.resume.save_training(step, self._model_state(), self.optimizer, self.history, **extra)

    def restore(self) -> int:
        """Continue from the resume state if there is one fit for this run; returns the
        number of steps already done (0 when starting afresh)."""
        if self.resume is None:
            return 0
        state = self.resume.restore_training(self.optimizer, self.history)
        if state is None:
            return 0
        net = unwrap(self.model)
        missing, unexpected = net.load_state_dict(state["model"], strict=False)
        if unexpected or any(self.keep_key(k) for k in missing):
            raise DataError(
                f"resume state {self.resume.path} does not fit the {self.plan.name} network: "
                f"missing {[k for k in missing if self.keep_key(k)]}, unexpected {unexpected}"
            )
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        log.info("%s: continuing from step %d", self.plan.name, state["step"])
        return int(state["step"])

    # ------------------------------------------------------------------ the loop

    def fit(
        self,
        batches: Iterable[B],
        step: Callable[[B], Terms],
        start: int,
        epoch_end: Callable[[int], None] | None = None,
    ) -> None:
        """Run global steps ``start, start + 1, ...``, one per item of ``batches`` (the
        sampler ends where the run stops); call
        ``epoch_end(epoch)`` (on every process) after the last step of each epoch."""
        p = self.plan
        self.model.train()
        tick, since = time.perf_counter(), start
        bar = tqdm(total=p.total, initial=start, desc=p.name, unit="step", dynamic_ncols=True,
                   disable=not self.dist.main)  # fmt: skip
        for done, batch in enumerate(batches, start=start + 1):
            if p.poly_power is not None:
                set_poly_lr(self.optimizer, done - 1, p.total, p.poly_power)
            lr = float(self.optimizer.param_groups[0]["lr"])
            terms = self._reduce(step(batch))
            if self.scheduler is not None:
                self.scheduler.step()
            self.history.add(step=done, epoch=(done - 1) // p.per_epoch, **terms, lr=lr)
            bar.update(1)
            if done % p.log_every == 0 or done == p.total:
                self._log(done, done - since, time.perf_counter() - tick)
                tick, since = time.perf_counter(), done
            if epoch_end is not None and done % p.per_epoch == 0:
                epoch_end(done // p.per_epoch - 1)
            if done < p.total and (done % p.resume_every == 0 or done % p.per_epoch == 0):
                self.save(done)
        bar.close()

    def _reduce(self, terms: Terms) -> dict[str, float]:
        names = list(terms)
        vec = torch.tensor([float(terms[k]) for k in names], dtype=torch.float64)
        if self.dist.world > 1:
            vec = vec.to(self.dist.device)
            torch.distributed.all_reduce(vec)
            vec = vec.cpu()
            summed = torch.tensor([k.split(":")[0] in self.plan.sum_terms for k in names])
            vec = torch.where(summed, vec, vec / self.dist.world)
        return dict(zip(names, vec.tolist(), strict=True))

    def epoch_rows(self, epoch: int) -> list[dict[str, float]]:
        """The history rows of ``epoch``."""
        return [r for r in self.history.rows if int(r["epoch"]) == epoch]

    def window_mean(self, steps: int) -> dict[str, float]:
        """Mean of each term over the last ``steps`` history rows (``step``/``epoch``/``lr``
        are the last row's)."""
        rows = self.history.rows[-steps:] if steps > 0 else []
        if not rows:
            return {}
        out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[-1]}
        out.update({k: rows[-1][k] for k in ("step", "epoch", "lr") if k in rows[-1]})
        return out

    def _log(self, done: int, steps: int, seconds: float) -> None:
        if not self.dist.main:
            return
        row = self.window_mean(steps)
        skip = ("step", "epoch", "lr")
        terms = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in skip and ":" not in k)
        rate = steps * self.plan.images_per_step / max(seconds, 1e-9)
        log.info(
            "%s step %d/%d epoch %d %s lr %.3e %.1f img/s",
            self.plan.name,
            done,
            self.plan.total,
            int(row.get("epoch", 0)),
            terms,
            row.get("lr", float("nan")),
            rate,
        )

    # ------------------------------------------------------------------ the end

    def finish(self, stop: int, write: Callable[[], None], history: Path | None = None) -> bool:
        """After :meth:`fit` ran to ``stop``: when the plan is complete, ``write()`` the
        outputs and the history table (rank 0) and remove the resume state; when stopped
        early (``max_steps``), save the resume state instead. Returns whether it completed."""
        complete = stop >= self.plan.total
        if not complete:
            self.save(stop)
            if self.dist.main:
                where = self.resume.path if self.resume is not None else "nowhere"
                log.info(
                    "%s: stopped at step %d of %d; a rerun continues from %s",
                    self.plan.name,
                    stop,
                    self.plan.total,
                    where,
                )
        elif self.dist.main:
            write()
            if history is not None:
                self.history.save(history)
            if self.resume is not None:
                self.resume.clear()
        if self.dist.world > 1:
            torch.distributed.barrier()
        return complete


def stop_step(total: int, max_steps: int | None) -> int:
    """Where a run stops: ``total``, or earlier at ``max_steps`` (tests: as if killed)."""
    return total if max_steps is None else min(total, max_steps)


def loader_kwargs(num_workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader settings every stage shares."""
    return {"num_workers": num_workers, "pin_memory": device.type == "cuda"}


def to_device(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Move a batch's tensors to ``device`` (non-blocking from pinned memory)."""
    return [t.to(device, non_blocking=True) for t in tensors]
