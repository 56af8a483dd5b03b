"""vqa (QAPE): ask a VQA model about every (image, present class) pair of one shard.

For each manifest row of the shard and each of its foreground classes, every question
template of one kind (``fg`` or ``bg``) is filled with the class name
(``"What kind of {} is in the photo?"``) and answered. The shard's answers are written as
one Parquet table with the string columns :data:`ANSWER_COLUMNS`
(``image_id, class_name, kind, question, answer``; ``question`` is the filled-in text),
rows in manifest order, then class index order, then question order.

Backends (``vqa.backend``):

* ``blip``: transformers ``BlipForQuestionAnswering`` + ``BlipProcessor`` from a hub name
  or a local folder. Images are resized to ``image_size`` (the paper: 480 px, the position
  embeddings interpolated when the checkpoint was converted at another size). Many
  questions, over several (image, class) pairs, go through one forward: the vision encoder
  runs once per distinct image of the batch, the questions are padded, and the decoder's
  cross-attention is masked to each question's own tokens, so a batched answer equals the
  answer to the question asked alone (transformers 5.24's BLIP decoder ignores that mask;
  :func:`mask_cross_attention` fixes it, checked at load by :func:`padding_is_masked`;
  should the fix not take, each batch is decoded in groups of equal question length).
  Decoding is deterministic (beam search with ``num_beams`` beams; 1 = greedy). Answers
  are cached per (image, class, question, model key) under ``cache_dir``; a rerun asks
  only what is not cached there. The model key (:func:`model_key`) holds the checkpoint,
  image size, decoding settings and dtype: changing any of them asks again.
* ``precomputed``: imports answers: the QA-CLIMS authors' released ``*_vqa_{fg,bg}_blip.npy``
  (format ``qaclims_npy``, read through :mod:`qaclims.qape.safe_load`) or an answers table
  (format ``table``, e.g. the synthetic data set's ``answers.parquet``).

Cache layout: every ``cache_dir/<kind>-shard*/*.parquet`` is read (columns
:data:`CACHE_COLUMNS`), whatever sharding wrote it; a job writes only below its own folder
``cache_dir/<kind>-shard<k>of<n>/``: a new part file every ``cache_flush_batches``
batches (so a crash loses little), merged into ``answers.parquet`` at the end. No two
jobs of one sharding write the same file, and every write is atomic.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from qaclims.artifacts.tables import ANSWER_COLUMNS, CACHE_COLUMNS
from qaclims.core.config import runtime, setting
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_image, read_parquet, write_parquet
from qaclims.core.questions import BG_QUESTIONS, FG_QUESTIONS
from qaclims.data.manifest import raise_if_any, read_manifest, shard_rows
from qaclims.qape.safe_load import load_npy_dict

log = logging.getLogger(__name__)


KINDS: tuple[str, ...] = ("fg", "bg")
BACKENDS: tuple[str, ...] = ("blip", "precomputed")
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}
PRECOMPUTED_FORMATS: tuple[str, ...] = ("qaclims_npy", "table")
KEY = ["image_id", "class_name", "question"]
# Throughput is logged every this many batches.
LOG_EVERY_BATCHES = 20


@dataclass(frozen=True)
class QuestionsConfig:
    """Question templates per kind; ``{}`` is replaced by the class name.

    fg: foreground questions (the paper's six: kind/type/name of the object).
    bg: background questions (the paper's ten: above/under/behind/... the object).
    """

    fg: tuple[str, ...] = FG_QUESTIONS
    bg: tuple[str, ...] = BG_QUESTIONS


@dataclass(frozen=True)
class PrecomputedConfig:
    """Where the ``precomputed`` backend reads answers.

    fg: foreground answer file (``voc_vqa_fg_blip.npy`` or an answers table).
    bg: background answer file (may be the same table as ``fg``).
    format: qaclims_npy (the authors' pickled dict, restricted loader) or table (Parquet
        with columns image_id, class_name, kind, question, answer; question filled in or
        a template).
    answer_field: of a qaclims_npy file, ``answers`` (the lemmatised answers the reference
        trains on; the corpus then does not lemmatise them again) or ``vqa`` (BLIP's raw
        answers, lemmatised by the corpus).
    """

    fg: str = ""
    bg: str = ""
    format: str = setting("qaclims_npy", choices=PRECOMPUTED_FORMATS)
    answer_field: str = setting("answers", choices=("answers", "vqa"))


@dataclass(frozen=True)
class VqaConfig:
    """vqa settings (defaults = QA-CLIMS / BLIP ``blip_vqa`` generate).

    backend: blip (run a BLIP VQA model) or precomputed (import answers).
    model: transformers checkpoint: hub name or local folder (BLIP capfilt-large VQA).
    image_size: square input side in pixels (480 in the paper).
    batch_size: questions per forward, over several (image, class) pairs (the reference
        asks one question per forward).
    dtype: fp32 (the reference's BLIP), auto (fp16 on CUDA, fp32 on CPU; faster, answers
        may differ), fp16 or bf16.
    max_new_tokens: answer length limit in tokens, end token included (BLIP: max_length 10
        counting the start token).
    num_beams: beam-search width (BLIP generate: 3); 1 is greedy decoding.
    questions: question templates per kind.
    precomputed: answer files of the precomputed backend.
    cache_flush_batches: batches between writes of new answers to the cache.
    """

    backend: str = setting("blip", choices=BACKENDS)
    model: str = "Salesforce/blip-vqa-capfilt-large"
    image_size: int = setting(480, ge=1)
    batch_size: int = runtime(128, ge=1)
    dtype: str = setting("fp32", choices=tuple(DTYPES))
    max_new_tokens: int = setting(9, ge=1)
    num_beams: int = setting(3, ge=1)
    questions: QuestionsConfig = field(default_factory=QuestionsConfig)
    precomputed: PrecomputedConfig = field(default_factory=PrecomputedConfig)
    cache_flush_batches: int = runtime(50, ge=1)

    def __post_init__(self) -> None:
        _check_choice("vqa.backend", self.backend, BACKENDS)
        _check_choice("vqa.dtype", self.dtype, tuple(DTYPES))
        _check_choice("vqa.precomputed.format", self.precomputed.format, PRECOMPUTED_FORMATS)
        for name in ("image_size", "batch_size", "max_new_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key vqa.{name} must be >= 1")
        if self.cache_flush_batches < 1:
            raise ConfigError("config key vqa.cache_flush_batches must be >= 1")
        for kind in KINDS:
            _check_templates(kind, getattr(self.questions, kind))


def _check_templates(kind: str, templates: Sequence[str]) -> None:
    if len(set(templates)) != len(templates):
        raise ConfigError(f"config key vqa.questions.{kind} repeats a question")
    for i, q in enumerate(templates):
        if q.count("{}") != 1:
            raise ConfigError(
                f"config key vqa.questions.{kind}[{i}] ({q!r}) must hold exactly one '{{}}'"
            )


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key {key} is {value!r}; expected one of {list(allowed)}")


# ----------------------------------------------------------------------------- inputs


def templates_for(cfg: VqaConfig, kind: str) -> tuple[str, ...]:
    """The question templates of ``kind`` (``fg`` | ``bg``); raises if unknown or empty."""
    if kind not in KINDS:
        raise ValueError(f"vqa kind must be one of {KINDS}, got {kind!r}")
    templates: tuple[str, ...] = getattr(cfg.questions, kind)
    if not templates:
        raise ConfigError(f"config key vqa.questions.{kind} is empty")
    return templates


def read_labelled_manifest(manifest: Path, classes: Sequence[str]) -> pd.DataFrame:
    """The manifest sorted by ``image_id``; labels outside ``0..C-1`` raise naming it."""
    df = read_manifest(manifest).sort_values("image_id", kind="stable").reset_index(drop=True)
    bad = [
        f"{i} {labels}"
        for i, labels in zip(df["image_id"], df["labels"], strict=True)
        if any(not 0 <= c < len(classes) for c in labels)
    ]
    raise_if_any(bad, f"images with labels outside 0..{len(classes) - 1}", f"in {manifest}")
    return df


def question_items(
    rows: pd.DataFrame, classes: Sequence[str], templates: Sequence[str]
) -> pd.DataFrame:
    """One row per (image, present class, question): image_id, image_path, class_name,
    question (filled in), in manifest, class and question order."""
    recs = [
        (image_id, path, classes[c], t.format(classes[c]))
        for image_id, path, labels in zip(
            rows["image_id"], rows["image_path"], rows["labels"], strict=True
        )
        for c in labels
        for t in templates
    ]
    return pd.DataFrame(recs, columns=["image_id", "image_path", "class_name", "question"])


def _pair_key(name: str) -> str:
    """Class names compared loosely: case, spaces and underscores ignored."""
    return name.lower().replace(" ", "").replace("_", "")


# ----------------------------------------------------------------------------- precomputed


def _npy_answers(
    path: Path, templates: Sequence[str], field: str = "answers"
) -> tuple[dict[tuple[str, str, str], str], set[str]]:
    """The authors' ``{image: {class: {"vqa": [(template, raw answer)], "answers":
    [lemmatised answer]}}}`` as a map ``(image_id, class key, template) -> answer`` (only
    the configured templates; ``field``: ``answers``, the lemmatised answer at the
    template's position in ``vqa``, as the reference reads it, or ``vqa``, the raw one),
    and the file's image names."""
    data = load_npy_dict(path)
    wanted = set(templates)
    out: dict[tuple[str, str, str], str] = {}
    for image_id, per_class in data.items():
        if not isinstance(per_class, dict):
            raise DataError(f"{path}: entry {image_id!r} is not a dict of classes")
        for cls, entry in per_class.items():
            pairs = entry.get("vqa") if isinstance(entry, dict) else None
            if not isinstance(pairs, list | tuple):
                raise DataError(f"{path}: entry {image_id!r}/{cls!r} has no 'vqa' list")
            lemmas = entry.get("answers")
            if field == "answers" and not (
                isinstance(lemmas, list | tuple) and len(lemmas) == len(pairs)
            ):
                raise DataError(
                    f"{path}: entry {image_id!r}/{cls!r} has no 'answers' list as long as its "
                    "'vqa' list (set vqa.precomputed.answer_field: vqa to read raw answers)"
                )
            for i, qa in enumerate(pairs):
                if not (isinstance(qa, list | tuple) and len(qa) == 2):
                    raise DataError(f"{path}: {image_id!r}/{cls!r}: bad (question, answer)")
                if qa[0] in wanted:
                    answer = lemmas[i] if field == "answers" else qa[1]
                    out[(str(image_id), _pair_key(cls), qa[0])] = answer
    return out, set(data)


def _table_answers(path: Path, kind: str) -> tuple[dict[tuple[str, str, str], str], set[str]]:
    """An answers table as ``(image_id, class key, question) -> answer`` for one kind; a
    question may be stored filled in or as its template (both are keys); and the table's
    image ids."""
    df = read_parquet(path, columns=list(ANSWER_COLUMNS))
    images = set(df["image_id"].astype(str))
    df = df[df["kind"] == kind]
    table = {
        (str(i), _pair_key(c), str(q)): str(a)
        for i, c, q, a in zip(
            df["image_id"], df["class_name"], df["question"], df["answer"], strict=True
        )
    }
    return table, images


def _lookup(
    table: dict[tuple[str, str, str], str], items: pd.DataFrame, templates: Sequence[str]
) -> list[str | None]:
    """Answer of each item, by its filled-in question or else its template."""
    by_fill = {t.format(c): t for c in items["class_name"].unique() for t in templates}
    out: list[str | None] = []
    for i, c, q in zip(items["image_id"], items["class_name"], items["question"], strict=True):
        k = _pair_key(c)
        a = table.get((i, k, q))
        out.append(a if a is not None else table.get((i, k, by_fill[q])))
    return out


def precomputed_path(cfg: VqaConfig, kind: str) -> Path:
    """The ``kind`` answer file of the precomputed backend; it must exist."""
    path_str = getattr(cfg.precomputed, kind)
    if not path_str:
        raise ConfigError(f"config key vqa.precomputed.{kind} is empty (backend precomputed)")
    path = Path(path_str)
    if not path.is_file():
        raise DataError(f"missing answer file {path} (vqa.precomputed.{kind})")
    return path


def precomputed_answers(
    cfg: VqaConfig, kind: str, all_items: pd.DataFrame, templates: Sequence[str]
) -> pd.Series:
    """Answers of ``all_items`` (every pair of the data set) from the configured file.

    Raises :class:`DataError` naming the file when images, classes or questions of the
    data set are missing from it (with counts and a few names).
    """
    path = precomputed_path(cfg, kind)
    if cfg.precomputed.format == "qaclims_npy":
        table, images = _npy_answers(path, templates, cfg.precomputed.answer_field)
    else:
        table, images = _table_answers(path, kind)
    answers = _lookup(table, all_items, templates)
    _check_coverage(path, all_items, answers, images)
    return pd.Series(answers, index=all_items.index, dtype=object)


def _check_coverage(
    path: Path, items: pd.DataFrame, answers: list[str | None], file_images: set[str]
) -> None:
    """Missing images, then missing (image, class, question) answers, as one DataError."""
    wanted = list(dict.fromkeys(items["image_id"]))
    missing_img = [i for i in wanted if i not in file_images]
    raise_if_any(missing_img, f"of the data set's {len(wanted)} images are", f"missing from {path}")
    missing = [
        f"{i}/{c}: {q!r}"
        for (i, c, q), a in zip(items[KEY].itertuples(index=False), answers, strict=True)
        if a is None
    ]
    raise_if_any(missing, "(image, class, question) answers are", f"missing from {path}")
    extra = len(file_images - set(wanted))
    if extra:
        log.info("%s holds %d images that are not in the manifest (ignored)", path, extra)


# ----------------------------------------------------------------------------- BLIP


def model_source(model: str) -> str:
    """``model`` as a local folder path or a hub name; a folder must hold ``config.json``.

    A name that starts with ``/``, ``.`` or ``~``, that exists on disk, or that is not of
    the hub's ``owner/name`` form is a folder. Raises :class:`ConfigError` naming
    ``vqa.model`` when that folder is missing or incomplete.
    """
    p = Path(model).expanduser()
    local = model.startswith(("/", ".", "~")) or p.exists() or model.count("/") != 1
    if not local:
        return model
    if not p.is_dir():
        raise ConfigError(f"config key vqa.model: checkpoint folder {p} does not exist")
    if not (p / "config.json").is_file():
        raise ConfigError(f"config key vqa.model: checkpoint folder {p} has no config.json")
    return str(p.resolve())


def model_key(cfg: VqaConfig, dtype: torch.dtype) -> str:
    """What the answers depend on besides the question: checkpoint (a folder by its
    config and weight file sizes), image size, decoding and dtype."""
    src = model_source(cfg.model)
    ident = src
    if Path(src).is_dir():
        h = hashlib.sha256((Path(src) / "config.json").read_bytes())
        for f in sorted(Path(src).glob("*.safetensors")) + sorted(Path(src).glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        ident = f"{src}#{h.hexdigest()[:16]}"
    dt = str(dtype).removeprefix("torch.")
    return f"{ident}|size={cfg.image_size}|beams={cfg.num_beams}|new={cfg.max_new_tokens}|{dt}"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 on CPU; otherwise the named dtype."""
    dt = DTYPES[name]
    if dt is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    return dt


def _cross_mask_hook(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Hand a cross-attention's ``attention_mask`` to the ``encoder_attention_mask``
    argument, the one the attention applies to encoder states."""
    if kwargs.get("encoder_hidden_states") is not None and "encoder_attention_mask" not in kwargs:
        kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
    return args, kwargs


def mask_cross_attention(model: Any) -> list[Any]:
    """Make the answer decoder's cross-attention honour the question padding mask.

    transformers 5.24's BLIP text layers pass that mask to the attention under the name
    it ignores for encoder states, so padded question tokens would be attended to (the
    original BLIP passes an all-ones mask too, harmless only for one unpadded question).
    Installs a forward pre-hook per decoder cross-attention; returns the hook handles.
    """
    return [
        mod.register_forward_pre_hook(_cross_mask_hook, with_kwargs=True)
        for name, mod in model.text_decoder.named_modules()
        if name.endswith("crossattention.self")
    ]


@torch.no_grad()
def padding_is_masked(model: Any, seed: int = 0) -> bool:
    """Whether decoder logits for a question padded with junk states equal those for the
    unpadded question (one decoder step on random question states)."""
    tc = model.config.text_config
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(1, 5, tc.hidden_size, generator=g)
    junk = 10 * torch.randn(1, 3, tc.hidden_size, generator=g)
    padded = torch.cat([states, junk], 1)
    p = next(model.parameters())
    bos = torch.full((1, 1), model.decoder_start_token_id, device=p.device)

    def logits(h: torch.Tensor, mask: list[int]) -> torch.Tensor:
        m = torch.tensor([mask], device=p.device)
        out = model.text_decoder(
            input_ids=bos, encoder_hidden_states=h.to(p), encoder_attention_mask=m
        )
        return out.logits.float()

    a, b = logits(states, [1] * 5), logits(padded, [1] * 5 + [0] * 3)
    return bool(torch.allclose(a, b, rtol=1e-2, atol=1e-2 * float(a.abs().max())))


def _length_groups(mask: torch.Tensor) -> list[list[int]]:
    """Row indices grouped by question length (``mask``: BxL 0/1), groups by first row."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(mask.sum(1).tolist()):
        groups.setdefault(int(n), []).append(i)
    return list(groups.values())


@dataclass
class BlipAnswerer:
    """A loaded BLIP VQA model that answers batches of questions about images.

    pad_masked: the decoder ignores question padding (checked at load with
    :func:`padding_is_masked` after :func:`mask_cross_attention`); when False each batch is
    decoded in groups of equal question length, so no padding reaches the decoder.
    """

    model: Any
    processor: Any
    device: str
    dtype: torch.dtype
    image_size: int
    num_beams: int
    max_new_tokens: int
    pad_masked: bool = False

    @classmethod
    def load(cls, cfg: VqaConfig, device: str) -> BlipAnswerer:
        """Load model and processor (``weights_only`` loading; offline names resolve from
        the local cache). Failures raise :class:`ConfigError` naming ``vqa.model``."""
        from transformers import BlipForQuestionAnswering, BlipProcessor

        src = model_source(cfg.model)
        dtype = resolve_dtype(cfg.dtype, device)
        try:
            processor = BlipProcessor.from_pretrained(src)
            model = BlipForQuestionAnswering.from_pretrained(src, dtype=dtype, weights_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"config key vqa.model: cannot load {cfg.model!r}: {e}") from e
        model.eval().to(device)
        return cls(
            model,
            processor,
            device,
            dtype,
            cfg.image_size,
            cfg.num_beams,
            cfg.max_new_tokens,
            _fix_padding(model),
        )

    @torch.no_grad()
    def answer(
        self, images: Sequence[np.ndarray], image_index: Sequence[int], questions: Sequence[str]
    ) -> list[str]:
        """Answer ``questions[j]`` about ``images[image_index[j]]`` (images ``HxWx3 uint8``).

        One vision pass per distinct image, one padded question-encoder pass, then the
        decoder's ``generate`` over all questions (or per equal-length group when padding
        is not masked); each answer equals that of the question asked alone.
        """
        embeds = self._image_embeds(images)[torch.as_tensor(list(image_index), device=self.device)]
        tok = self.processor.tokenizer(list(questions), padding="longest", return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        img_mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=self.device)
        q = self.model.text_encoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=embeds,
            encoder_attention_mask=img_mask,
            return_dict=False,
        )[0]
        groups = [list(range(len(questions)))] if self.pad_masked else _length_groups(mask)
        answers = [""] * len(questions)
        for g in groups:
            n = int(mask[g].sum(1).max())
            for i, a in zip(g, self._decode(q[g, :n], mask[g, :n]), strict=True):
                answers[i] = a
        return answers

    def _image_embeds(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Vision-encoder states ``N x (1 + P) x D`` of images resized to ``image_size``."""
        pix = self.processor.image_processor(
            list(images),
            size={"height": self.image_size, "width": self.image_size},
            return_tensors="pt",
        )["pixel_values"].to(self.device, self.dtype)
        interp = self.image_size != self.model.config.vision_config.image_size
        return self.model.vision_model(pixel_values=pix, interpolate_pos_encoding=interp)[0]

    def _decode(self, q: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Deterministic ``generate`` from question states ``B x L x D`` (mask ``B x L``)."""
        from transformers import GenerationConfig

        m, tc = self.model, self.model.config.text_config
        gen = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            do_sample=False,
            eos_token_id=tc.sep_token_id,
            pad_token_id=tc.pad_token_id,
            bos_token_id=m.decoder_start_token_id,
        )
        bos = torch.full((q.shape[0], 1), m.decoder_start_token_id, device=q.device)
        out = m.text_decoder.generate(
            input_ids=bos,
            encoder_hidden_states=q,
            encoder_attention_mask=mask,
            generation_config=gen,
        )
        texts = self.processor.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]


def _fix_padding(model: Any) -> bool:
    """Install :func:`mask_cross_attention`; True if padding is then masked, else remove the
    hooks (a transformers version they do not fit) and return False."""
    hooks = mask_cross_attention(model)
    try:
        if hooks and padding_is_masked(model):
            return True
    except TypeError as e:
        log.warning("cross-attention mask hook does not fit this transformers: %s", e)
    for h in hooks:
        h.remove()
    log.warning("BLIP decoder ignores question padding; decoding in equal-length groups")
    return False


# ----------------------------------------------------------------------------- cache


def read_cache(cache_dir: Path, kind: str, key: str) -> pd.DataFrame:
    """Every cached ``kind`` answer under ``cache_dir`` (all shardings) for model key
    ``key`` (columns image_id, class_name, question, answer; duplicates dropped)."""
    frames = []
    for f in sorted(cache_dir.glob(f"{kind}-shard*/[!.]*.parquet")):  # not temporary files
        try:
            df = pd.read_parquet(f, columns=list(CACHE_COLUMNS), filters=[("model", "==", key)])
        except FileNotFoundError:  # merged away by a concurrent job
            continue
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring unreadable cache file %s: %s", f, e)
            continue
        frames.append(df.drop(columns="model"))
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype=str) for c in [*KEY, "answer"]})
    return pd.concat(frames, ignore_index=True).drop_duplicates(KEY, keep="last")


def _own_cache_dir(cache_dir: Path, kind: str, shard: int, num_shards: int) -> Path:
    return cache_dir / f"{kind}-shard{shard}of{num_shards}"


def _write_part(own: Path, rows: list[tuple[str, str, str, str]], key: str) -> None:
    """Append answers to the cache as a new part file (atomic)."""
    if rows:
        df = pd.DataFrame(rows, columns=[*KEY, "answer"]).assign(model=key)
        write_parquet(own / f"part-{uuid.uuid4().hex}.parquet", df[list(CACHE_COLUMNS)])


def _merge_parts(own: Path) -> None:
    """Merge this job's part files into ``answers.parquet``, then remove the parts."""
    parts = sorted(own.glob("part-*.parquet"))
    if not parts:
        return
    files = ([own / "answers.parquet"] if (own / "answers.parquet").is_file() else []) + parts
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    write_parquet(own / "answers.parquet", df.drop_duplicates([*KEY, "model"], keep="last"))
    for f in parts:
        f.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- asking


def _batches(todo: pd.DataFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(todo), batch_size):
        yield todo.iloc[start : start + batch_size]


def _load_images(batch: pd.DataFrame) -> tuple[list[np.ndarray], list[int]]:
    """The batch's distinct images (``HxWx3 uint8``) and each row's index into them."""
    paths = list(dict.fromkeys(batch["image_path"]))
    where = {p: i for i, p in enumerate(paths)}
    return [read_image(p) for p in paths], [where[p] for p in batch["image_path"]]


def _prefetched(
    batches: list[pd.DataFrame],
) -> Iterator[tuple[pd.DataFrame, list[np.ndarray], list[int]]]:
    """Each batch with its images, the next batch's images read in a background thread."""
    with ThreadPoolExecutor(1) as pool:
        nxt: Future[tuple[list[np.ndarray], list[int]]] = pool.submit(_load_images, batches[0])
        for b, batch in enumerate(batches):
            images, index = nxt.result()
            if b + 1 < len(batches):
                nxt = pool.submit(_load_images, batches[b + 1])
            yield batch, images, index


def ask(
    answerer: BlipAnswerer, todo: pd.DataFrame, batch_size: int, flush: int, own: Path, key: str
) -> list[str]:
    """Answer every row of ``todo`` (image_path, image_id, class_name, question) in
    batches of ``batch_size``; new answers go to the cache folder ``own`` every ``flush``
    batches and at the end. Returns the answers in row order."""
    answers: list[str] = []
    pending: list[tuple[str, str, str, str]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="vqa", unit="q")
    for b, (batch, images, index) in enumerate(_prefetched(list(_batches(todo, batch_size)))):
        got = answerer.answer(images, index, list(batch["question"]))
        answers += got
        pending += list(zip(*(batch[k] for k in KEY), got, strict=True))
        bar.update(len(batch))
        if (b + 1) % flush == 0:
            _write_part(own, pending, key)
            pending = []
        if (b + 1) % LOG_EVERY_BATCHES == 0:
            rate = len(answers) / (time.perf_counter() - t0)
            log.info("%d/%d questions, %.1f answers/s", len(answers), len(todo), rate)
    bar.close()
    _write_part(own, pending, key)
    return answers


def blip_answers(
    cfg: VqaConfig, items: pd.DataFrame, kind: str, device: str, cache_dir: Path, own: Path
) -> pd.Series:
    """Answers of ``items`` from the cache, asking the model only for the rest."""
    dev = torch_device(device)
    key = model_key(cfg, resolve_dtype(cfg.dtype, dev))
    cached = read_cache(cache_dir, kind, key)
    merged = items.merge(cached, on=KEY, how="left", validate="many_to_one")
    todo = merged[merged["answer"].isna()]
    log.info(
        "%d questions: %d cached, %d to ask (model key %s)",
        len(items),
        len(items) - len(todo),
        len(todo),
        key,
    )
    if len(todo):
        answerer = BlipAnswerer.load(cfg, dev)
        got = ask(answerer, todo, cfg.batch_size, cfg.cache_flush_batches, own, key)
        merged.loc[todo.index, "answer"] = got
    _merge_parts(own)
    return pd.Series(list(merged["answer"]), index=items.index, dtype=object)


# ----------------------------------------------------------------------------- entry


def answers_frame(items: pd.DataFrame, answers: pd.Series, kind: str) -> pd.DataFrame:
    """The shard table: :data:`ANSWER_COLUMNS`, all strings."""
    df = pd.DataFrame(
        {
            "image_id": items["image_id"],
            "class_name": items["class_name"],
            "kind": kind,
            "question": items["question"],
            "answer": answers,
        },
        columns=list(ANSWER_COLUMNS),
    )
    return df.astype(str).reset_index(drop=True)


def run(
    manifest: Path,
    classes: list[str],
    cfg: VqaConfig,
    kind: str,
    out: Path,
    shard: int,
    num_shards: int,
    device: str,
    cache_dir: Path,
) -> None:
    """Answer the ``kind`` questions for shard ``shard`` of ``num_shards`` of ``manifest``.

    ``classes``: foreground class names (label ``c`` -> ``classes[c]``). Writes ``out``
    (Parquet, :data:`ANSWER_COLUMNS`). ``device``: ``auto | cpu | cuda``. ``cache_dir``:
    answer cache of the ``blip`` backend, outside the rule outputs. Config, model folder
    and answer-file problems raise before the model is loaded.
    """
    templates = templates_for(cfg, kind)
    if cfg.backend == "blip":
        model_source(cfg.model)
        torch_device(device)
    else:
        precomputed_path(cfg, kind)
    df = read_labelled_manifest(Path(manifest), classes)
    items = question_items(shard_rows(df, shard, num_shards), classes, templates)
    if cfg.backend == "precomputed":
        all_items = question_items(df, classes, templates)
        every = precomputed_answers(cfg, kind, all_items, templates)
        lookup = dict(zip(all_items[KEY].itertuples(index=False, name=None), every, strict=True))
        keys = items[KEY].itertuples(index=False, name=None)
        answers = pd.Series([lookup[k] for k in keys], index=items.index, dtype=object)
    else:
        own = _own_cache_dir(Path(cache_dir), kind, shard, num_shards)
        answers = blip_answers(cfg, items, kind, device, Path(cache_dir), own)
    write_parquet(out, answers_frame(items, answers, kind))
    log.info(
        "vqa %s shard %d/%d: %d answers for %d images -> %s",
        kind,
        shard,
        num_shards,
        len(items),
        items["image_id"].nunique(),
        out,
    )


# ----------------------------------------------------------------------------- tiny model

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def write_tiny_blip(
    folder: Path,
    words: Sequence[str],
    seed: int = 0,
    image_size: int = 32,
    hidden: int = 32,
    init_std: float = 0.5,
) -> Path:
    """Write a randomly initialised tiny BLIP VQA checkpoint + processor to ``folder``.

    For tests and the offline demo: a word-level vocabulary (the special tokens, then
    ``words`` lower-cased), 2-layer vision/text transformers of width ``hidden``, patch 8,
    ``image_size`` px, weights drawn with std ``init_std`` (large, so that answers differ
    between images and questions). Loadable with ``vqa.model: <folder>``; nothing is downloaded.
    """
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *(w.lower() for w in words)]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(vocab=str(folder / "vocab.txt"), bos_token="[DEC]")
    small = {
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden,
        "initializer_range": init_std,
    }
    text = {
        **small,
        "vocab_size": len(vocab),
        "encoder_hidden_size": hidden,
        "max_position_embeddings": 64,
        "bos_token_id": tok.bos_token_id,
        "sep_token_id": tok.sep_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vision = {**small, "image_size": image_size, "patch_size": 8}
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(folder)
    size = {"height": image_size, "width": image_size}
    BlipProcessor(image_processor=BlipImageProcessor(size=size), tokenizer=tok).save_pretrained(
        folder
    )
    return folder
