"""vqa: tiny random BLIP end to end on CPU, batching, the answer cache, precomputed answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from qaclims.core.config import from_mapping
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_image, write_image
from qaclims.core.questions import BG_QUESTIONS, FG_QUESTIONS
from qaclims.data.manifest import manifest_frame, write_manifest
from qaclims.qape import blip, vqa

CLASSES = ["dog", "cat", "dining table"]
WORDS = (
    "what kind of is in the photo ? type this also called usually another word for name "
    "above under behind around next to left right side scene environment place dog cat "
    "dining table grass sky road a"
).split()
FG2 = ["What kind of {} is in the photo?", "What is this {} also called?"]
NEW_Q = "What is another name for this {}?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blip.write_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny", WORDS, seed=0)


def make_manifest(root: Path, n: int, name: str = "manifest.parquet") -> Path:
    """``n`` random images; image i has classes {i % 3, 2} (sorted, unique)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / "img" / f"im{i}.png"
        if not path.is_file():
            write_image(path, rng.integers(0, 256, (24 + i, 40 - i, 3), dtype=np.uint8))
        labels = sorted({i % 3, 2})
        rows.append(
            dict(
                image_id=f"im{i}",
                image_path=str(path),
                height=24 + i,
                width=40 - i,
                labels=labels,
                gt_path="",
            )
        )
    write_manifest(root / name, manifest_frame(rows))
    return root / name


def blip_cfg(model: Path, **kw: Any) -> vqa.VqaConfig:
    mapping = {"model": str(model), "image_size": 32, "batch_size": 7, "num_beams": 1, **kw}
    return from_mapping(vqa.VqaConfig, mapping, "vqa")


def hf_single(ans: vqa.BlipAnswerer, image: np.ndarray, question: str) -> str:
    """One question through transformers' own ``BlipForQuestionAnswering.generate``."""
    inputs = ans.processor(images=image, text=question, return_tensors="pt")
    out = ans.model.generate(
        **inputs, max_new_tokens=ans.max_new_tokens, num_beams=ans.num_beams, do_sample=False
    )
    return str(ans.processor.decode(out[0], skip_special_tokens=True)).strip()


@pytest.mark.parametrize(("beams", "pad_masked"), [(1, True), (3, True), (1, False)])
def test_batched_answers_equal_one_at_a_time(
    tiny: Path, tmp_path: Path, beams: int, pad_masked: bool
) -> None:
    """Batched (padded, or grouped by length) answers equal transformers' own generate
    asked one question at a time."""
    make_manifest(tmp_path, 3)
    images = [read_image(tmp_path / "img" / f"im{i}.png") for i in range(3)]
    ans = vqa.BlipAnswerer.load(blip_cfg(tiny, num_beams=beams), "cpu")
    assert ans.pad_masked
    ans.pad_masked = pad_masked
    index = [0, 0, 1, 2, 1, 2, 0, 2]
    qs = [t.format(c) for t, c in zip(BG_QUESTIONS, CLASSES * 3, strict=False)][:8]
    lengths = {len(ans.processor.tokenizer(q)["input_ids"]) for q in qs}
    assert len(lengths) > 1  # the batch is padded
    batched = ans.answer(images, index, qs)
    single = [hf_single(ans, images[i], q) for i, q in zip(index, qs, strict=True)]
    assert batched == single
    assert len(set(single)) >= 3  # the tiny model's answers depend on image and question


def test_run_end_to_end_with_shards(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = make_manifest(tmp_path, 5)
    cfg = blip_cfg(tiny)
    full, parts = tmp_path / "full.parquet", [tmp_path / f"s{k}.parquet" for k in range(2)]
    vqa.run(manifest, CLASSES, cfg, "fg", full, 0, 1, "cpu", tmp_path / "cache_a")
    for k in range(2):
        vqa.run(manifest, CLASSES, cfg, "fg", parts[k], k, 2, "cpu", tmp_path / "cache_b")
    df = pd.read_parquet(full)
    assert list(df.columns) == list(vqa.ANSWER_COLUMNS)
    expected = [
        (f"im{i}", CLASSES[c], t.format(CLASSES[c]))
        for i in range(5)
        for c in sorted({i % 3, 2})
        for t in FG_QUESTIONS
    ]
    assert (
        list(df[["image_id", "class_name", "question"]].itertuples(index=False, name=None))
        == expected
    )
    assert set(df["kind"]) == {"fg"}
    s1 = pd.read_parquet(parts[1])
    assert sorted(set(s1["image_id"])) == ["im1", "im3"]
    both = pd.concat([pd.read_parquet(p) for p in parts]).sort_values(["image_id", "class_name"])
    key = ["image_id", "class_name", "question"]
    assert both.merge(df, on=key, suffixes=("", "_full")).eval("answer == answer_full").all()
    assert len(both) == len(df)
    # the two shards' cache serves a one-shard run completely
    count = Counter(monkeypatch)
    vqa.run(
        manifest, CLASSES, cfg, "fg", tmp_path / "again.parquet", 0, 1, "cpu", tmp_path / "cache_b"
    )
    assert count.calls == 0
    assert pd.read_parquet(tmp_path / "again.parquet").equals(df)
    ans = vqa.BlipAnswerer.load(cfg, "cpu")
    row = df.iloc[-1]
    assert row["answer"] == hf_single(ans, read_image(tmp_path / "img/im4.png"), row["question"])


def test_padding_probe_detects_unmasked_decoder(tiny: Path) -> None:
    """Without the hook the decoder attends to padding; with it, it does not."""
    from transformers import BlipForQuestionAnswering

    model = BlipForQuestionAnswering.from_pretrained(str(tiny)).eval()
    assert not blip.padding_is_masked(model)
    hooks = blip.mask_cross_attention(model)
    assert len(hooks) == 2 and blip.padding_is_masked(model)


class Counter:
    """Wraps ``BlipAnswerer.answer``: counts forward calls and the questions asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.asked: list[str] = []
        original = vqa.BlipAnswerer.answer

        def counting(this: vqa.BlipAnswerer, images: Any, index: Any, qs: Any) -> list[str]:
            self.calls += 1
            self.asked += list(qs)
            return original(this, images, index, qs)

        monkeypatch.setattr(vqa.BlipAnswerer, "answer", counting)

    def reset(self) -> None:
        self.calls, self.asked = 0, []


def test_cache_asks_only_what_is_new(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = make_manifest(tmp_path, 4)
    cache, out = tmp_path / "cache", tmp_path / "out.parquet"
    n_pairs = sum(len({i % 3, 2}) for i in range(4))
    count = Counter(monkeypatch)
    q2 = {"fg": FG2}
    vqa.run(manifest, CLASSES, blip_cfg(tiny, questions=q2), "fg", out, 0, 1, "cpu", cache)
    assert len(count.asked) == 2 * n_pairs and count.calls == -(-2 * n_pairs // 7)
    first = pd.read_parquet(out)
    # one more question: only its answers are generated
    count.reset()
    q3 = {"fg": [*FG2, NEW_Q]}
    vqa.run(manifest, CLASSES, blip_cfg(tiny, questions=q3), "fg", out, 0, 1, "cpu", cache)
    assert sorted(count.asked) == sorted(
        NEW_Q.format(CLASSES[c]) for i in range(4) for c in {i % 3, 2}
    )
    second = pd.read_parquet(out)
    assert len(second) == 3 * n_pairs
    assert (
        first.merge(second, on=["image_id", "class_name", "question"])
        .eval("answer_x == answer_y")
        .all()
    )
    # one more image: only its pairs are asked
    count.reset()
    manifest5 = make_manifest(tmp_path, 5, "m5.parquet")
    vqa.run(manifest5, CLASSES, blip_cfg(tiny, questions=q3), "fg", out, 0, 1, "cpu", cache)
    assert len(count.asked) == 3 * len({4 % 3, 2})
    # the parts were merged into this job's one cache file
    assert [p.relative_to(cache).as_posix() for p in cache.rglob("*.parquet")] == [
        "fg-shard0of1/answers.parquet"
    ]


def test_crash_keeps_flushed_answers(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = make_manifest(tmp_path, 3)
    cache, out = tmp_path / "cache", tmp_path / "out.parquet"
    cfg = blip_cfg(tiny, questions={"fg": FG2}, batch_size=2, cache_flush_batches=1)
    n = 2 * sum(len({i % 3, 2}) for i in range(3))  # 10 questions, 5 batches
    original = vqa.BlipAnswerer.answer
    calls = []

    def failing(this: vqa.BlipAnswerer, images: Any, index: Any, qs: Any) -> list[str]:
        calls.append(len(qs))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(this, images, index, qs)

    monkeypatch.setattr(vqa.BlipAnswerer, "answer", failing)
    with pytest.raises(RuntimeError, match="killed"):
        vqa.run(manifest, CLASSES, cfg, "fg", out, 0, 1, "cpu", cache)
    assert not out.exists()
    assert len(list(cache.rglob("part-*.parquet"))) == 2
    monkeypatch.setattr(vqa.BlipAnswerer, "answer", original)
    count = Counter(monkeypatch)
    vqa.run(manifest, CLASSES, cfg, "fg", out, 0, 1, "cpu", cache)
    assert len(count.asked) == n - 4
    assert len(pd.read_parquet(out)) == n


def test_another_model_asks_again(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = make_manifest(tmp_path, 2)
    cache, out = tmp_path / "cache", tmp_path / "out.parquet"
    other = blip.write_tiny_blip(tmp_path / "other", WORDS, seed=1)
    q = {"fg": FG2}
    count = Counter(monkeypatch)
    vqa.run(manifest, CLASSES, blip_cfg(tiny, questions=q), "fg", out, 0, 1, "cpu", cache)
    n = len(count.asked)
    for cfg in (blip_cfg(other, questions=q), blip_cfg(tiny, questions=q, num_beams=2)):
        count.reset()
        vqa.run(manifest, CLASSES, cfg, "fg", out, 0, 1, "cpu", cache)
        assert len(count.asked) == n > 0
    count.reset()
    vqa.run(manifest, CLASSES, blip_cfg(other, questions=q), "fg", out, 0, 1, "cpu", cache)
    assert count.asked == []


def test_a_model_retrained_in_place_asks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's tiny BLIP is retrained into the same folder when a train_tiny_blip
    setting changes: same config.json, same file sizes, other weights. Its answers must
    come from the new weights, not from the cache of the old ones; rewriting the same
    weights asks nothing."""
    manifest = make_manifest(tmp_path, 3)
    cache, out = tmp_path / "cache", tmp_path / "out.parquet"
    model = blip.write_tiny_blip(tmp_path / "model", WORDS, seed=0)
    before = {f.name: (f.stat().st_size, f.read_bytes()) for f in model.iterdir()}
    q = {"fg": FG2}
    count = Counter(monkeypatch)
    vqa.run(manifest, CLASSES, blip_cfg(model, questions=q), "fg", out, 0, 1, "cpu", cache)
    n = len(count.asked)
    blip.write_tiny_blip(model, WORDS, seed=1)
    after = {f.name: (f.stat().st_size, f.read_bytes()) for f in model.iterdir()}
    # what a key of config.json and file sizes saw: nothing changed
    assert before["config.json"] == after["config.json"]
    assert {k: v[0] for k, v in before.items()} == {k: v[0] for k, v in after.items()}
    assert before["model.safetensors"][1] != after["model.safetensors"][1]
    count.reset()
    vqa.run(manifest, CLASSES, blip_cfg(model, questions=q), "fg", out, 0, 1, "cpu", cache)
    assert len(count.asked) == n > 0
    # the answers are the retrained model's: those of the same weights in a fresh folder
    fresh = blip.write_tiny_blip(tmp_path / "fresh", WORDS, seed=1)
    out2 = tmp_path / "out2.parquet"
    vqa.run(manifest, CLASSES, blip_cfg(fresh, questions=q), "fg", out2, 0, 1, "cpu",
            tmp_path / "cache2")  # fmt: skip
    key = ["image_id", "class_name", "question"]
    both = pd.read_parquet(out).merge(pd.read_parquet(out2), on=key)
    assert len(both) == n and (both["answer_x"] == both["answer_y"]).all()
    # the same weights written again (new mtimes, same bytes): nothing is asked
    blip.write_tiny_blip(model, WORDS, seed=1)
    count.reset()
    vqa.run(manifest, CLASSES, blip_cfg(model, questions=q), "fg", out, 0, 1, "cpu", cache)
    assert count.asked == []


def test_interpolated_image_size_runs(tiny: Path, tmp_path: Path) -> None:
    ans = vqa.BlipAnswerer.load(blip_cfg(tiny, image_size=48), "cpu")
    img = np.zeros((20, 30, 3), np.uint8)
    seen: list[tuple[int, ...]] = []
    hook = ans.model.vision_model.register_forward_hook(
        lambda m, i, o: seen.append(tuple(o[0].shape))
    )
    got = ans.answer([img], [0, 0], ["what is under the dog?", "what is this cat also called?"])
    hook.remove()
    assert len(got) == 2 and seen == [(1, (48 // 8) ** 2 + 1, 32)]


def test_config_errors(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vqa.backend"):
        from_mapping(vqa.VqaConfig, {"backend": "llava"}, "vqa")
    with pytest.raises(ConfigError, match=r"vqa.questions.bg\[1\]"):
        from_mapping(vqa.VqaConfig, {"questions": {"bg": ["a {}?", "no slot?"]}}, "vqa")
    with pytest.raises(ConfigError, match="vqa.dtype"):
        from_mapping(vqa.VqaConfig, {"dtype": "int8"}, "vqa")
    # a missing folder is reported before the (also missing) manifest is read
    with pytest.raises(ConfigError, match="checkpoint folder .*nowhere.* does not exist"):
        vqa.run(
            tmp_path / "no.parquet",
            CLASSES,
            blip_cfg(tmp_path / "nowhere"),
            "fg",
            tmp_path / "o.parquet",
            0,
            1,
            "cpu",
            tmp_path / "c",
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        vqa.model_source(str(tmp_path / "empty"))
    assert vqa.model_source("Salesforce/blip-vqa-capfilt-large") == (
        "Salesforce/blip-vqa-capfilt-large"
    )
    with pytest.raises(ValueError, match="kind"):
        vqa.run(
            tmp_path / "no.parquet",
            CLASSES,
            blip_cfg(tiny),
            "mid",
            tmp_path / "o.parquet",
            0,
            1,
            "cpu",
            tmp_path / "c",
        )


def authors_npy(path: Path, images: list[str], labels: dict[str, list[str]]) -> dict[str, Any]:
    """A file in the authors' format: all 16 questions, lemmatised answers
    '<image>-<class>-<q index>' beside raw ones with a trailing 's'."""
    qs = [*FG_QUESTIONS, *BG_QUESTIONS]
    data = {
        im: {
            c.replace(" ", ""): {
                "vqa": [(q, f"{im}-{c}-{j}s") for j, q in enumerate(qs)],
                "answers": [f"{im}-{c}-{j}" for j in range(len(qs))],
            }
            for c in labels[im]
        }
        for im in images
    }
    np.save(path, np.array(data, dtype=object))
    return data


@pytest.mark.parametrize("field", ["answers", "vqa"])
def test_precomputed_authors_npy(tmp_path: Path, field: str) -> None:
    manifest = make_manifest(tmp_path, 5)
    labels = {f"im{i}": [CLASSES[c] for c in sorted({i % 3, 2})] for i in range(5)}
    authors_npy(tmp_path / "bg.npy", [f"im{i}" for i in range(6)], labels | {"im5": ["dog"]})
    bg = [BG_QUESTIONS[3], BG_QUESTIONS[0]]
    cfg = from_mapping(
        vqa.VqaConfig,
        {
            "backend": "precomputed",
            "questions": {"bg": bg},
            "precomputed": {"bg": str(tmp_path / "bg.npy"), "answer_field": field},
        },
        "vqa",
    )
    out = tmp_path / "out.parquet"
    vqa.run(manifest, CLASSES, cfg, "bg", out, 1, 2, "cpu", tmp_path / "cache")
    df = pd.read_parquet(out)
    tail = "" if field == "answers" else "s"  # the reference reads the lemmatised field
    want = [
        (f"im{i}", c, t.format(c), f"im{i}-{c}-{6 + BG_QUESTIONS.index(t)}{tail}")
        for i in (1, 3)
        for c in labels[f"im{i}"]
        for t in bg
    ]
    assert (
        list(
            df[["image_id", "class_name", "question", "answer"]].itertuples(index=False, name=None)
        )
        == want
    )
    assert not (tmp_path / "cache").exists()


def test_precomputed_mismatch_names_images(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, 5)
    labels = {f"im{i}": [CLASSES[c] for c in sorted({i % 3, 2})] for i in range(5)}
    authors_npy(tmp_path / "fg.npy", ["im0", "im2", "im4"], labels)
    cfg = from_mapping(
        vqa.VqaConfig,
        {"backend": "precomputed", "precomputed": {"fg": str(tmp_path / "fg.npy")}},
        "vqa",
    )
    with pytest.raises(DataError, match=r"2 of the data set's 5 images .*fg\.npy: im1, im3"):
        vqa.run(manifest, CLASSES, cfg, "fg", tmp_path / "o.parquet", 0, 1, "cpu", tmp_path)
    cfg_q = from_mapping(
        vqa.VqaConfig,
        {
            "backend": "precomputed",
            "questions": {"fg": ["Who made this {}?"]},
            "precomputed": {"fg": str(tmp_path / "fg.npy")},
        },
        "vqa",
    )
    authors_npy(tmp_path / "fg.npy", [f"im{i}" for i in range(5)], labels)
    with pytest.raises(DataError, match="answers are missing from .*Who made this dog"):
        vqa.run(manifest, CLASSES, cfg_q, "fg", tmp_path / "o.parquet", 0, 1, "cpu", tmp_path)


def test_precomputed_table(tmp_path: Path) -> None:
    """The synthetic set's answers.parquet: templates for fg, filled-in questions for bg."""
    manifest = make_manifest(tmp_path, 3)
    rows = []
    for i in range(3):
        for c in sorted({i % 3, 2}):
            name = CLASSES[c]
            rows += [(f"im{i}", name, "fg", t, f"fg{i}{c}{j}") for j, t in enumerate(FG_QUESTIONS)]
            rows += [
                (f"im{i}", name, "bg", t.format(name), f"bg{i}{c}{j}")
                for j, t in enumerate(BG_QUESTIONS)
            ]
    table = pd.DataFrame(rows, columns=list(vqa.ANSWER_COLUMNS))
    table.to_parquet(tmp_path / "answers.parquet")
    for kind, n_q in (("fg", 6), ("bg", 10)):
        cfg = from_mapping(
            vqa.VqaConfig,
            {
                "backend": "precomputed",
                "precomputed": {"format": "table", kind: str(tmp_path / "answers.parquet")},
            },
            "vqa",
        )
        out = tmp_path / f"{kind}.parquet"
        vqa.run(manifest, CLASSES, cfg, kind, out, 0, 1, "cpu", tmp_path / "c")
        df = pd.read_parquet(out)
        assert len(df) == n_q * 5
        want = {(i, c, a) for i, c, k, _, a in rows if k == kind}
        assert (
            set(df[["image_id", "class_name", "answer"]].itertuples(index=False, name=None)) == want
        )
        assert all("{}" not in q for q in df["question"])


def test_resolve_dtype() -> None:
    assert vqa.resolve_dtype("auto", "cpu") is torch.float32
    assert vqa.resolve_dtype("auto", "cuda:0") is torch.float16
    assert vqa.resolve_dtype("bf16", "cpu") is torch.bfloat16


def test_released_answer_files_give_the_references_phrase_sets(tmp_path: Path) -> None:
    """An authors' file through vqa (precomputed) and corpus (reference rules) holds, per
    (image, class), the reference's phrases: FG_VQA's completed lemmatised answers with
    their multiplicity, BG_VQA's set of answers less the label (computed here from the
    reference's rules, not with the project's code)."""
    from collections import Counter

    from qaclims.qape import corpus

    manifest = make_manifest(tmp_path, 4)
    labels = {f"im{i}": [CLASSES[c] for c in sorted({i % 3, 2})] for i in range(4)}
    rng = np.random.default_rng(5)
    words = ["husky", "dogs", "dog", "table", "wooden", "grass", "sky", "dining table",
             "kitchen", "cat", "tabby", "hot dog", "floor", "catamaran"]  # fmt: skip
    qs = [*FG_QUESTIONS, *BG_QUESTIONS]
    data: dict[str, Any] = {}
    for im, cls in labels.items():
        data[im] = {}
        for c in cls:
            lem = [str(w) for w in rng.choice(words, len(qs))]
            raw = [w + "s" if w in ("dog", "table") else w for w in lem]  # raw != lemmatised
            data[im][c] = {"vqa": list(zip(qs, raw, strict=True)), "answers": lem}
    np.save(tmp_path / "a.npy", np.array(data, dtype=object))
    supply = {"dining table": ["table"]}
    tables = []
    for kind in ("fg", "bg"):
        cfg = from_mapping(
            vqa.VqaConfig,
            {"backend": "precomputed", "precomputed": {kind: str(tmp_path / "a.npy")}},
            "vqa",
        )
        out = tmp_path / f"{kind}.parquet"
        vqa.run(manifest, CLASSES, cfg, kind, out, 0, 1, "cpu", tmp_path / "cache")
        tables.append(out)
    ccfg = from_mapping(corpus.CorpusConfig, {"synonyms": supply}, "corpus")
    corpus.run(tables, CLASSES, ccfg, tmp_path / "c.parquet", tmp_path / "s.parquet",
               lemmatised=True)  # fmt: skip
    got = pd.read_parquet(tmp_path / "c.parquet")
    for im, cls in labels.items():
        for c in cls:
            answers = data[im][c]["answers"]
            fg = answers[: len(FG_QUESTIONS)]
            exp_label = {"dining table": ["table", "dining table"]}.get(c, [c])  # supply_cat
            want_fg = Counter(a if any(e in a for e in exp_label) else f"{a} {c}" for a in fg)
            want_bg = set(answers[len(FG_QUESTIONS) :]) - {c}
            sel = got[(got.image_id == im) & (got.class_name == c)]
            fg_rows = sel[sel.kind == "fg"]
            assert dict(zip(fg_rows.phrase, fg_rows["count"], strict=True)) == want_fg, (im, c)
            assert set(sel[sel.kind == "bg"].phrase) == want_bg, (im, c)
