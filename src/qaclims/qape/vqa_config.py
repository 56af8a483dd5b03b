"""The ``vqa`` config slice: backends, question templates, precomputed answer files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from qaclims.core.config import runtime, setting
from qaclims.core.errors import ConfigError
from qaclims.core.questions import BG_QUESTIONS, FG_QUESTIONS

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
