"""Answers/s: the reference's one-question-per-forward loop against the batched backend.

Same model, same inputs. The reference (QA-CLIMS ``get_blip_vqa_results.py``) loads the
image once per (image, class) pair and calls the model once per question; here that
loop calls transformers' ``BlipForQuestionAnswering.generate`` with one question. The
batched backend is :class:`qaclims.qape.vqa.BlipAnswerer` (one vision pass per image, many
questions per decoder call). Prints both rates, the speed-up and how many answers agree.

    python benchmarks/bench_vqa.py --images 16 --device auto
    python benchmarks/bench_vqa.py --model /path/to/blip-vqa-capfilt-large --image-size 480
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
        model = a.model or str(
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
        ans = vqa.BlipAnswerer.load(cfg, device)
        pairs = workload(a.images, a.classes_per_image)
        n = len(pairs) * 16
        batched(ans, pairs[:1], a.batch_size)  # warm-up
        ref, t_ref = timed(reference_loop, ans, pairs)
        new, t_new = timed(batched, ans, pairs, a.batch_size)
    same = sum(x == y for x, y in zip(ref, new, strict=True))
    print(
        f"device {device} dtype {ans.dtype} model {'tiny' if not a.model else a.model} "
        f"image {a.image_size}px beams {a.num_beams} pad_masked {ans.pad_masked}"
    )
    print(f"{n} questions ({len(pairs)} pairs x 16), batch {a.batch_size}")
    print(f"reference loop : {n / t_ref:8.1f} answers/s ({t_ref:.2f} s)")
    print(f"batched backend: {n / t_new:8.1f} answers/s ({t_new:.2f} s)")
    print(f"speed-up {t_ref / t_new:.1f}x; identical answers {same}/{n}")
    if a.record:
        speed.append(
            a.record,
            bench="bench_vqa.py",
            what=f"BLIP VQA, {'tiny' if not a.model else Path(a.model).name} model, "
            f"{a.image_size} px, {a.num_beams} beams, {str(ans.dtype).removeprefix('torch.')} "
            f"(same answers: {same}/{n})",
            unit="answers/s",
            reference=n / t_ref,
            ours=n / t_new,
            device=str(device),
        )


if __name__ == "__main__":
    main()
