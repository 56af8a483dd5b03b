"""Answers/s: the reference's one-question-per-forward loop against the batched backend.

Same model, same inputs. The reference (QA-CLIMS ``get_blip_vqa_results.py``) loads the
image once per (image, class) pair and calls the model once per question; here that
loop calls transformers' ``BlipForQuestionAnswering.generate`` with one question. The
batched backend is :class:`qaclims.qape.vqa.BlipAnswerer` (one vision pass per image, many
questions per decoder call). Prints both rates, the speed-up and how many answers agree.

    python benchmarks/bench_vqa.py --images 16 --device auto
    python benchmarks/bench_vqa.py --model /path/to/blip-vqa-capfilt-large --image-size 480
    python benchmarks/bench_vqa.py --blip-large --image-size 480 --device cuda

``--blip-large``: random weights in the shapes of Salesforce/blip-vqa-capfilt-large (ViT-L/16
vision encoder; BERT-base question encoder and answer decoder with cross-attention; a
30,524-token vocabulary), nothing downloaded. Its answers are noise and usually run to the
token limit, so its rate is a lower bound on the trained model's (whose answers are shorter);
the record states the mean answer length. With ``--device cuda`` at the paper's 480 px and
3 beams it is the VQA rate of the GPU-hours table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qaclims.core.config import from_mapping  # noqa: E402
from qaclims.core.devices import torch_device  # noqa: E402
from qaclims.core.questions import BG_QUESTIONS, FG_QUESTIONS
from qaclims.qape import blip, vqa  # noqa: E402
from qaclims.report import speed  # noqa: E402

CLASSES = ["dog", "cat", "dining table", "tv monitor", "potted plant", "person"]
WORDS = sorted(
    {
        w.strip("?").lower()
        for q in FG_QUESTIONS + BG_QUESTIONS
        for w in q.replace("{}", " ".join(CLASSES)).split()
    }
    | {"grass", "sky", "?"}
)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="checkpoint folder (default: a tiny random one)")
    p.add_argument("--blip-large", action="store_true", help="random weights, BLIP-large shapes")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--classes-per-image", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64, help="width of the tiny model")
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    p.add_argument("--record", default=None, help="append the result to this JSON-lines file")
    return p.parse_args()


def blip_large_shaped(image_size: int, cfg: vqa.VqaConfig, device: str) -> vqa.BlipAnswerer:
    """An answerer over a randomly initialised BLIP VQA model with BLIP-large's shapes (see
    the module doc), built in memory. transformers gives the answer decoder's cross-attention
    the vision width; BLIP's decoder attends to the 768-wide question states, so those
    layers are rebuilt at 768."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    with tempfile.TemporaryDirectory() as tmp:
        vocab = list(dict.fromkeys([*blip.SPECIAL_TOKENS, *WORDS]))
        vocab += [f"[unused{i}]" for i in range(30524 - len(vocab))]
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tok = BertTokenizer(vocab=str(Path(tmp) / "vocab.txt"), bos_token="[DEC]")
    text = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "vocab_size": len(vocab), "encoder_hidden_size": 1024,
            "max_position_embeddings": 512, "bos_token_id": tok.bos_token_id,
            "sep_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id}  # fmt: skip
    vision = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "intermediate_size": 4096, "image_size": 384, "patch_size": 16}  # fmt: skip
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision))
    for layer in model.text_decoder.bert.encoder.layer:
        att = layer.crossattention.self
        att.key, att.value = torch.nn.Linear(768, 768), torch.nn.Linear(768, 768)
    dtype = blip.resolve_dtype(cfg.dtype, device)
    model = model.to(device, dtype).eval()
    size = {"height": image_size, "width": image_size}
    processor = BlipProcessor(image_processor=BlipImageProcessor(size=size), tokenizer=tok)
    return vqa.BlipAnswerer(model, processor, device, dtype, cfg.image_size, cfg.num_beams,
                            cfg.max_new_tokens, blip._fix_padding(model))  # fmt: skip


def workload(n_images: int, per_image: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """(image ``HxWx3 uint8``, class name) pairs, each asked all 16 questions."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n_images):
        img = rng.integers(0, 256, (240 + 8 * i, 320, 3), dtype=np.uint8)
        pairs += [(img, CLASSES[(i + k) % len(CLASSES)]) for k in range(per_image)]
    return pairs


def reference_loop(ans: vqa.BlipAnswerer, pairs: list[tuple[np.ndarray, str]]) -> list[str]:
    """One image load per pair, one ``generate`` per question."""
    out = []
    size = {"height": ans.image_size, "width": ans.image_size}
    for img, cls in pairs:
        pix = ans.processor.image_processor(img, size=size, return_tensors="pt")["pixel_values"]
        pix = pix.to(ans.device, ans.dtype)
        interp = ans.image_size != ans.model.config.vision_config.image_size
        for t in FG_QUESTIONS + BG_QUESTIONS:
            ids = ans.processor.tokenizer(t.format(cls), return_tensors="pt")["input_ids"]
            gen = ans.model.generate(
                input_ids=ids.to(ans.device),
                pixel_values=pix,
                interpolate_pos_encoding=interp,
                do_sample=False,
                max_new_tokens=ans.max_new_tokens,
                num_beams=ans.num_beams,
            )
            out.append(ans.processor.decode(gen[0], skip_special_tokens=True).strip())
    return out


def batched(ans: vqa.BlipAnswerer, pairs: list[tuple[np.ndarray, str]], bs: int) -> list[str]:
    """The backend: ``bs`` questions per call, each distinct image encoded once per call."""
    items = [
        (i, t.format(cls)) for i, (_, cls) in enumerate(pairs) for t in FG_QUESTIONS + BG_QUESTIONS
    ]
    out: list[str] = []
    for s in range(0, len(items), bs):
        chunk = items[s : s + bs]
        ids = list(dict.fromkeys(i for i, _ in chunk))
        where = {i: k for k, i in enumerate(ids)}
        out += ans.answer(
            [pairs[i][0] for i in ids], [where[i] for i, _ in chunk], [q for _, q in chunk]
        )
    return out


def timed(fn: object, *args: object) -> tuple[list[str], float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    res = fn(*args)  # type: ignore[operator]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return res, time.perf_counter() - t


def main() -> None:
    a = parse()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch_device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        if a.model:
            model = a.model
        elif a.blip_large:
            model = "blip-large-shaped"
        else:
            model = str(
                blip.write_tiny_blip(
                    Path(tmp) / "tiny", WORDS, hidden=a.hidden, image_size=a.image_size
                )
            )
        cfg = from_mapping(
            vqa.VqaConfig,
            {
                "model": model,
                "image_size": a.image_size,
                "batch_size": a.batch_size,
                "num_beams": a.num_beams,
                "dtype": a.dtype,
            },
            "vqa",
        )
        if a.blip_large:
            ans = blip_large_shaped(a.image_size, cfg, device)
        else:
            ans = vqa.BlipAnswerer.load(cfg, device)
        pairs = workload(a.images, a.classes_per_image)
        n = len(pairs) * 16
        batched(ans, pairs[:1], a.batch_size)  # warm-up
        ref, t_ref = timed(reference_loop, ans, pairs)
        new, t_new = timed(batched, ans, pairs, a.batch_size)
        words = float(np.mean([len(x.split()) for x in new]))
    same = sum(x == y for x, y in zip(ref, new, strict=True))
    name = Path(a.model).name if a.model else "BLIP-large-shaped" if a.blip_large else "tiny"
    print(
        f"device {device} dtype {ans.dtype} model {name} "
        f"image {a.image_size}px beams {a.num_beams} pad_masked {ans.pad_masked}"
    )
    print(f"{n} questions ({len(pairs)} pairs x 16), batch {a.batch_size}")
    print(f"reference loop : {n / t_ref:8.1f} answers/s ({t_ref:.2f} s)")
    print(f"batched backend: {n / t_new:8.1f} answers/s ({t_new:.2f} s)")
    print(f"speed-up {t_ref / t_new:.1f}x; identical answers {same}/{n}")
    print(f"mean answer length {words:.1f} words (limit {ans.max_new_tokens} tokens)")
    paper = (
        (a.model or a.blip_large) and device.startswith("cuda") and a.image_size == 480
        and a.num_beams == 3 and str(ans.dtype) == "torch.float32"
    )  # fmt: skip
    if a.record:
        speed.append(
            a.record,
            bench="bench_vqa.py",
            what=f"BLIP VQA, {name} model, {a.image_size} px, {a.num_beams} beams, "
            f"{str(ans.dtype).removeprefix('torch.')}, {words:.1f} words per answer "
            f"(same answers: {same}/{n})",
            unit="answers/s",
            reference=n / t_ref,
            ours=n / t_new,
            device=str(device),
            stage="vqa" if paper else None,
        )


if __name__ == "__main__":
    main()
