"""BLIP VQA for the vqa stage: loading (hub name or local folder), batched answering with the
decoder's cross-attention masked to each question's own tokens, and a tiny random BLIP
checkpoint for tests and the offline demo.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qaclims.core.errors import ConfigError
from qaclims.models.pretrained import is_hub_name
from qaclims.qape.vqa_config import DTYPES, VqaConfig

log = logging.getLogger(__name__)


def model_source(model: str) -> str:
    """``model`` as a local folder path or a hub name; a folder must hold ``config.json``.

    A name that starts with ``/``, ``.`` or ``~``, that exists on disk, or that is not of
    the hub's ``owner/name`` form is a folder. Raises :class:`ConfigError` naming
    ``vqa.model`` when that folder is missing or incomplete.
    """
    if is_hub_name(model):
        return model
    p = Path(model).expanduser()
    if not p.is_dir():
        raise ConfigError(f"config key vqa.model: checkpoint folder {p} does not exist")
    if not (p / "config.json").is_file():
        raise ConfigError(f"config key vqa.model: checkpoint folder {p} has no config.json")
    return str(p.resolve())


def model_key(cfg: VqaConfig, dtype: torch.dtype) -> str:
    """What the answers depend on besides the question: the checkpoint, image size, decoding
    and dtype.

    A folder counts by its contents (config.json and every weight file's bytes), so a model
    fine-tuned again in place (same config.json, same file sizes) asks again, and the same
    weights written again ask nothing (the demo's tiny BLIP also records its training's
    fingerprint in its config.json). A hub name counts with the revision it resolves to
    (``name@<commit>``, from transformers' cache lookup: offline the cached one), so a new
    revision asks again."""
    src = model_source(cfg.model)
    if is_hub_name(src):
        ident = f"{src}@{_hub_revision(src)}"
    else:
        ident = f"{src}#{folder_digest(Path(src))[:16]}"
    dt = str(dtype).removeprefix("torch.")
    return f"{ident}|size={cfg.image_size}|beams={cfg.num_beams}|new={cfg.max_new_tokens}|{dt}"


def folder_digest(folder: Path) -> str:
    """sha256 (hex) of a checkpoint folder's ``config.json`` and of each ``*.safetensors`` /
    ``*.bin`` file's name and bytes; hashed once per process while no file's size or mtime
    changes (a vqa job keys both kinds of questions with it)."""
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors")),
             *sorted(folder.glob("*.bin"))]  # fmt: skip
    stamps = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _files_digest(str(folder), stamps)


@functools.lru_cache(maxsize=4)
def _files_digest(folder: str, stamps: tuple[tuple[str, int, int], ...]) -> str:
    root = Path(folder)
    h = hashlib.sha256((root / "config.json").read_bytes())
    for name, _, _ in stamps[1:]:
        h.update(name.encode() + b"\0")
        with (root / name).open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def _hub_revision(name: str) -> str:
    """The commit a hub name resolves to (the snapshot folder of its ``config.json``)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(name, "config.json")
    except OSError as e:
        raise ConfigError(f"config key vqa.model: cannot resolve {name!r}: {e}") from e
    if path is None:
        raise ConfigError(f"config key vqa.model: {name!r} has no config.json")
    return Path(path).parent.name


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
