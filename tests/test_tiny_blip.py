"""train_tiny_blip: the demo's VQA model learns the facts it is trained on, resumes exactly,
and is a model folder the vqa stage's blip backend loads and answers with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from qaclims.core.errors import DataError
from qaclims.core.io import write_image
from qaclims.qape import train_tiny_blip as ttb
from qaclims.qape.blip import BlipAnswerer

COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images, each one coloured square on grey or green; the facts: the square's colour
    (fg) and the background's name (bg), which only the pixels tell."""
    root = tmp_path_factory.mktemp("blipworld")
    rng = np.random.default_rng(0)
    rows, ids = [], []
    for i in range(12):
        colour, bg = ("red", "blue")[i % 2], ("grey", "green")[(i // 2) % 2]
        img = np.full((32, 32, 3), (128, 128, 128) if bg == "grey" else (20, 160, 20), np.uint8)
        y, x = rng.integers(0, 16, 2)
        img[y : y + 14, x : x + 14] = COLOURS[colour]
        write_image(root / "JPEGImages" / f"im{i}.jpg", img)
        ids.append(f"im{i}")
        rows.append((f"im{i}", "square", "fg", "what colour is the square?", colour))
        rows.append((f"im{i}", "square", "bg", "what is behind the square?", f"{bg} field"))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    cols = ["image_id", "class_name", "kind", "question", "answer"]
    pd.DataFrame(rows, columns=cols).to_parquet(root / "answers.parquet")
    return root


def cfg(**over: object) -> ttb.TinyBlipConfig:
    base = {"image_size": 32, "hidden": 32, "epochs": 40, "batch_size": 8, "lr": 0.003,
            "log_every": 1000}  # fmt: skip
    return ttb.TinyBlipConfig(**{**base, **over})  # type: ignore[arg-type]


def test_it_learns_the_facts_and_the_vqa_backend_loads_it(world: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    stats = ttb.train_tiny_blip(world, world / "answers.parquet", cfg(), tmp_path / "m", "cpu")
    assert stats["exact"] >= 0.9, stats  # colour and background read from the pixels
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert len(meta["qaclims_fingerprint"]) == 16  # the vqa cache's model key follows it
    from qaclims.core.io import current_umask

    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "m").iterdir()}
    assert set(modes.values()) == {0o666 & ~current_umask()}, modes  # not transformers' 0600
    from qaclims.qape.vqa_config import VqaConfig

    ans = BlipAnswerer.load(VqaConfig(model=str(tmp_path / "m"), image_size=32, num_beams=1),
                            "cpu")  # fmt: skip
    from qaclims.core.io import read_image

    img = [read_image(world / "JPEGImages" / f"im{i}.jpg") for i in (0, 1, 2)]
    got = ans.answer(img, [0, 1, 2], ["what colour is the square?"] * 3)
    assert got == ["red", "blue", "red"]
    got = ans.answer(img, [0, 2], ["what is behind the square?"] * 2)
    assert got == ["grey field", "green field"]


def test_a_stopped_training_resumes_to_the_same_weights(world: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    c = cfg(epochs=2)
    ttb.train_tiny_blip(world, world / "answers.parquet", c, tmp_path / "a", "cpu",
                        tmp_path / "a.pt")  # fmt: skip
    assert ttb.train_tiny_blip(world, world / "answers.parquet", c, tmp_path / "b", "cpu",
                               tmp_path / "b.pt", max_steps=3) == {}  # fmt: skip
    assert not (tmp_path / "b").exists() and (tmp_path / "b.pt").is_file()
    ttb.train_tiny_blip(world, world / "answers.parquet", c, tmp_path / "b", "cpu",
                        tmp_path / "b.pt")  # fmt: skip
    a, b = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b.pt").exists()


def test_missing_split_and_no_answers_are_named(world: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="val.txt"):
        ttb.training_rows(world, world / "answers.parquet", ["val"])
    (world / "ImageSets" / "Segmentation" / "other.txt").write_text("nobody\n")
    with pytest.raises(DataError, match="no answers for the images of splits"):
        ttb.training_rows(world, world / "answers.parquet", ["other"])
