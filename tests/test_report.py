"""Report figures are valid PNGs showing the data; the stage table holds the numbers."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qaclims.report import figures as report
from qaclims.report import tables


def png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 50 and im.height > 50
        arr = np.asarray(im.convert("RGB"))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 2  # something drawn
    return arr


def has_colour(arr: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool(np.all(arr == np.array(rgb, np.uint8), axis=-1).any())


def per_class(ious: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"class": ["background", "cat", "dog"][: len(ious)], "iou": ious})


def test_per_class_plot(tmp_path: Path) -> None:
    tables = {"cam": per_class([0.8, 0.4, math.nan]), "ritc": per_class([0.85, 0.5, 0.3])}
    report.plot_per_class_iou(tables, tmp_path / "pc.png", title="seeds")
    arr = png(tmp_path / "pc.png")
    # matplotlib's default first two bar colours (C0, C1) are drawn
    assert has_colour(arr, (31, 119, 180)) and has_colour(arr, (255, 127, 14))
    with pytest.raises(ValueError, match="other classes"):
        report.plot_per_class_iou({"a": per_class([0.1, 0.2]), "b": per_class([0.1])}, "x.png")


def test_per_class_bars_keep_one_width_at_21_and_81_classes(tmp_path: Path) -> None:
    sizes = {}
    for n in (21, 81):
        t = pd.DataFrame({"class": [f"c{i}" for i in range(n)], "iou": np.linspace(0, 1, n)})
        report.plot_per_class_iou({"a": t, "b": t}, tmp_path / f"{n}.png")
        with Image.open(tmp_path / f"{n}.png") as im:
            sizes[n] = im.size
    assert sizes[21][0] == sizes[81][0] <= 1200  # the 81 classes wrap into rows of <= 21
    assert sizes[81][1] > 3 * sizes[21][1] * 0.8


def test_sweep_plot(tmp_path: Path) -> None:
    t = np.round(np.arange(0.05, 0.6, 0.01), 2)
    sweeps = {
        "cam": pd.DataFrame({"threshold": t, "miou": 0.5 - (t - 0.15) ** 2}),
        "ritc": pd.DataFrame({"threshold": t, "miou": 0.6 - (t - 0.3) ** 2}),
    }
    report.plot_sweep(sweeps, tmp_path / "sw.png", fixed_threshold=0.15)
    png(tmp_path / "sw.png")
    with pytest.raises(ValueError, match="lacks columns"):
        report.plot_sweep({"x": pd.DataFrame({"t": [0.1]})}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_history_plot(tmp_path: Path) -> None:
    steps = np.arange(20)
    hist = pd.DataFrame(
        {
            "step": steps,
            "epoch": steps // 10,
            "loss_fg": np.exp(-steps / 5),
            "loss_bg": 0.5 * np.exp(-steps / 7),
            "lr": 0.1 * (1 - steps / 20),
        }
    )
    report.plot_history(hist, tmp_path / "h.png")
    png(tmp_path / "h.png")
    with pytest.raises(ValueError, match="no loss column"):
        report.plot_history(hist[["step", "lr"]], tmp_path / "h2.png")


def test_one_loss_panel_per_stage_with_only_its_loss_terms(tmp_path: Path) -> None:
    """train_ritc logs pairs, skipped and img/s beside its losses: they get no loss line;
    each stage has its own panel (titled by the stage), in the given order."""
    s = np.arange(1, 11)
    ritc = pd.DataFrame({"step": s * 2, "epoch": s // 6, "loss": 3 / s, "frc": 1 / s,
                         "brc": 1 / s, "area": 0.1 + 0 * s, "pairs": 12.0 + 0 * s,
                         "skipped": 0.0 * s, "lr": 0.01 / s, "img_per_s": 110.0 + s,
                         "pairs:0": 7.0 + 0 * s, "dead:0": 1.0 + 0 * s})  # fmt: skip
    cam = pd.DataFrame({"step": s, "epoch": s // 5, "loss": 1 / s, "lr": 0.1 / s})
    fig = report.plot_histories({"train_cam": cam, "train_ritc": ritc, "empty": cam[[]]},
                                tmp_path / "l.png")  # fmt: skip
    png(tmp_path / "l.png")
    panels = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in panels] == ["train_cam", "train_ritc"]
    lines = [[ln.get_label() for ln in ax.get_lines()] for ax in panels]
    assert lines == [["loss"], ["loss", "frc", "brc", "area"]]
    assert len(fig.axes) == 4  # each panel has its lr twin axis


def test_blend_by_hand() -> None:
    img = np.full((2, 2, 3), 100, np.uint8)
    lab = np.array([[0, 1], [255, 0]], np.uint8)
    out = report.blend_overlay(img, lab, alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(out[0, 1], [114, 50, 50])  # VOC class 1 = (128, 0, 0)
    np.testing.assert_array_equal(out[1, 0], [162, 162, 146])  # void = (224, 224, 192)
    cam = np.array([[0.0, 1.0], [1.0, 0.0]])
    out = report.blend_overlay(img, cam, alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [50, 50, 114])  # jet(0) = (0, 0, 0.5)
    np.testing.assert_array_equal(out[0, 1], [114, 50, 50])  # jet(1) = (0.5, 0, 0)
    # KxHxW CAMs are reduced by their channel max
    out3 = report.blend_overlay(img, np.stack([cam, np.zeros((2, 2))]), alpha=0.5)
    np.testing.assert_array_equal(out3, out)
    with pytest.raises(ValueError, match="does not match"):
        report.blend_overlay(img, np.zeros((3, 2), np.uint8))


def test_overlay_grid(tmp_path: Path) -> None:
    imgs = [np.full((16, 16, 3), 100, np.uint8), np.full((12, 20, 3), 200, np.uint8)]
    labels = [np.ones((16, 16), np.uint8), np.full((12, 20), 2, np.uint8)]
    cams = [np.ones((1, 16, 16)), np.zeros((2, 12, 20))]
    report.overlay_grid(
        imgs, {"cam": cams, "seed": labels}, tmp_path / "g.png", row_titles=["a", "b"]
    )
    arr = png(tmp_path / "g.png")
    assert has_colour(arr, (114, 50, 50))  # image 1 under label 1 (and under CAM 1.0)
    assert has_colour(arr, (100, 164, 100))  # image 2 (200) under label 2 = (0, 128, 0)
    with pytest.raises(ValueError, match="overlays for 2 images"):
        report.overlay_grid(imgs, labels[:1], tmp_path / "g2.png")


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in = False

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "tr":
            self.rows.append([])
        self._in = tag in ("td", "th")

    def handle_endtag(self, tag) -> None:
        self._in = False

    def handle_data(self, data) -> None:
        if self._in:
            self.rows[-1].append(data)


def test_stage_table(tmp_path: Path) -> None:
    rows = [
        {
            "stage": "eval_cam/cam",
            "split": "train",
            "num_images": 1464,
            "miou": 0.48312,
            "best_miou": 0.49,
            "extra": 1,
            "all_background_miou": 0.11229,
        },
        {
            "stage": "seeds <crf>",
            "split": "train",
            "num_images": 1464,
            "miou": 0.7,
            "best_miou": None,
            "coverage": 0.8123,
        },
        {"stage": "deeplab", "split": "val", "num_images": 1449, "miou": math.nan},
    ]
    tables.stage_table_html(rows, tmp_path / "t.html", title="VOC")
    text = (tmp_path / "t.html").read_text()
    assert "&lt;crf&gt;" in text  # escaped
    p = _Cells()
    p.feed(text)
    assert p.rows[0][:3] == ["Stage", "Split", "Images"] and len(p.rows[0]) == 6
    assert p.rows[1] == ["eval_cam/cam", "train", "1464", "48.31", "49.00", "–"]
    assert p.rows[2] == ["seeds <crf>", "train", "1464", "70.00", "–", "81.23"]
    assert p.rows[3] == ["deeplab", "val", "1449", "–", "–", "–"]
    # the floor: predicting background everywhere, from the first stage's summary
    assert p.rows[4] == ["all background (floor)", "train", "1464", "11.23", "–", "–"]
    assert "<p>" not in text
    tables.stage_table_html(rows, tmp_path / "n.html", notes=["archive <a>.tar.gz", "two"])
    paras = re.findall(r"<p>(.*?)</p>", (tmp_path / "n.html").read_text())
    assert paras[-2:] == ["archive &lt;a&gt;.tar.gz", "two"]


def test_per_class_table_deltas_and_dead_flag(tmp_path: Path) -> None:
    base = pd.DataFrame({"class": ["background", "cat", "dog"], "iou": [0.8, 0.5, 0.4]})
    ritc = pd.DataFrame({"class": ["background", "cat", "dog"], "iou": [0.82, 0.6, 0.1]})
    t = tables.per_class_table({"CAM": base, "QA-CLIMS": ritc}, "CAM", {"dog": 0.9}, 0.5)
    np.testing.assert_allclose(t["Δ QA-CLIMS"].to_numpy(), [2.0, 10.0, -30.0, -6.0])
    np.testing.assert_allclose(t.loc["mean", ["CAM", "QA-CLIMS"]], [170 / 3, 152 / 3])
    assert math.isnan(t.loc["cat", "dead CAMs (%)"]) and t.loc["dog", "dead CAMs (%)"] == 90
    tables.per_class_html(t, tmp_path / "pc.html")
    p = _Cells()
    p.feed((tmp_path / "pc.html").read_text())
    rows = {r[0]: r[1:] for r in p.rows[1:]}
    assert rows["dog"] == ["40.0", "10.0", "-30.0", "90 dead"]
    assert rows["cat"] == ["50.0", "60.0", "+10.0", "–"]
    assert 'class="flag">90 dead' in (tmp_path / "pc.html").read_text()


def test_corpus_page_lists_top_phrases_per_class_in_rank_order(tmp_path: Path) -> None:
    stats = pd.DataFrame(
        [("answers", "fg", "", "", 0, 10.0), ("answers", "bg", "", "", 0, 12.0),
         ("top_phrase", "fg", "cat", "kitten", 2, 3.0),
         ("top_phrase", "fg", "cat", "cat", 1, 5.0),
         ("top_phrase", "bg", "cat", "sofa", 1, 4.0),
         ("top_phrase", "fg", "cat", "tabby", 3, 1.0)],
        columns=["section", "kind", "class_name", "phrase", "rank", "value"],
    )  # fmt: skip
    tables.corpus_html(stats, tmp_path / "c.html", top=2)
    text = (tmp_path / "c.html").read_text()
    fg = text[text.index("<b>cat</b>") :]
    assert fg.index("cat <small>(5)") < fg.index("kitten <small>(3)") < fg.index("sofa")
    assert "tabby" not in text  # rank 3 > top 2
    tables.corpus_html(None, tmp_path / "none.html")
    assert "not built" in (tmp_path / "none.html").read_text()


def test_overlay_rows_cover_every_class_with_distinct_images() -> None:
    from qaclims.report.build import overlay_rows

    df = pd.DataFrame({"image_id": ["a", "b", "c", "d"],
                       "labels": [[0, 1], [0], [2], [1, 3]]})  # fmt: skip
    # class 0 -> a; class 1 -> a is taken, so d; class 2 -> c; class 3 -> d (only image)
    assert overlay_rows(df, 10) == [(0, 0), (3, 1), (2, 2), (3, 3)]
    assert overlay_rows(df, 2) == [(0, 0), (3, 1)]
    assert overlay_rows(df) == overlay_rows(df, 10)  # None: every class
    assert overlay_rows(df.iloc[:0], 5) == []


def test_overlay_sample_holds_every_class_row_maps_read_back_independently(
    tmp_path: Path,
) -> None:
    """write_overlay_sample keeps, for the row of every class, exactly the shown class's CAM
    (camfile's, to float16 precision) or the label map; a row without a file has no map; a
    report asking for the first rows gets them, one asking for other rows is refused
    naming the file."""
    from qaclims.artifacts import camfile
    from qaclims.core import io
    from qaclims.report.overlay import overlay_rows, read_overlay_sample, write_overlay_sample

    rng = np.random.default_rng(0)
    ids, labels = ["a", "b", "c"], [[0, 1], [1], [2]]
    for i in ids:
        io.write_label_png(tmp_path / "gt" / f"{i}.png", rng.integers(0, 4, (5, 6), np.uint8))
    man = tmp_path / "m.parquet"
    gt = [str(tmp_path / "gt" / f"{i}.png") for i in ids] + [""]
    io.write_parquet(man, pd.DataFrame({
        "image_id": ids + ["d"], "image_path": [f"{i}.jpg" for i in ids + ["d"]],
        "labels": labels + [[0]], "gt_path": gt,
    }))  # fmt: skip
    shard = {"a": tmp_path / "cams" / "s0", "b": tmp_path / "cams" / "s1"}  # c: no files
    for i, lab in zip(ids[:2], labels[:2], strict=True):
        cam = rng.random((len(lab), 5, 6)).astype(np.float32)
        camfile.write_cam(shard[i] / f"{i}.npz", camfile.cam_arrays(lab, cam, cam[:, :2, :2]))
        io.write_label_png(shard[i] / f"{i}.png", np.full((5, 6), ids.index(i) + 1, np.uint8))
    dirs = list(shard.values())
    # class 0 -> a, class 1 -> b (a is taken), class 2 -> c; "d" has no ground truth
    rows = [("a", 0), ("b", 1), ("c", 2)]
    df = pd.DataFrame({"image_id": ids, "labels": labels})
    assert [(ids[i], c) for i, c in overlay_rows(df)] == rows

    write_overlay_sample(man, dirs, "cam", tmp_path / "cam.npz")
    got = read_overlay_sample(tmp_path / "cam.npz", rows)
    for (i, c), m in zip(rows[:2], got[:2], strict=True):
        keys, want = camfile.read_cam(shard[i] / f"{i}.npz")
        assert m is not None and m.dtype == np.float32
        np.testing.assert_allclose(m, want[list(keys).index(c)], atol=5e-4)  # float16 steps
    assert got[2] is None
    write_overlay_sample(man, dirs, "labels", tmp_path / "lab.npz")
    got = read_overlay_sample(tmp_path / "lab.npz", rows[:2])  # a grid of two rows
    assert [m.dtype for m in got if m is not None] == [np.uint8, np.uint8]
    assert [int(np.unique(m)[0]) for m in got if m is not None] == [1, 2]

    with pytest.raises(ValueError, match="lab.npz"):
        read_overlay_sample(tmp_path / "lab.npz", [("b", 1)])  # not the sample's first row
    with pytest.raises(ValueError, match="overlay kind"):
        write_overlay_sample(man, dirs, "heatmap", tmp_path / "x.npz")
