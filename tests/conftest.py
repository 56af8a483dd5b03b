"""Shared test set-up: offline model hubs with placeholder caches, one torch thread, repo
paths."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.workflow_util import pretrained_caches

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every process of the tests (Snakemake runs included) finds the paper configs' pretrained
# models in private caches (placeholders: no test loads them), as a user who fetched them
# does; never the developer's own caches.
_CACHES = Path(tempfile.mkdtemp(prefix="qaclims-model-caches-"))
atexit.register(shutil.rmtree, _CACHES, True)
os.environ.update(pretrained_caches(_CACHES))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
