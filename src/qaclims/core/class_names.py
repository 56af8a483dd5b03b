"""Class names of the data sets as text: what the VQA questions, the CLIP prompts, the
corpus and every report use (one text name per class, as the reference's ``cat_names``).

Standard library only: the Snakefile checks config keys that name classes at parse time.
VOC's annotation files spell three classes without spaces (``diningtable``,
``pottedplant``, ``tvmonitor``); :data:`VOC_ANNOTATION_NAMES` maps them, and nothing else
sees those spellings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The 20 VOC foreground classes in label order (PNG value ``index + 1``).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
    "train", "tv monitor",
)  # fmt: skip

#: The same classes as spelt in VOC's XML ``<object><name>`` (same order).
VOC_ANNOTATION_NAMES: tuple[str, ...] = tuple(c.replace(" ", "") for c in VOC_CLASSES)

#: The 80 COCO 2014 categories in category-id order (the annotation files' own names).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip


def known_classes(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The class names a workflow config's data set has, known before any job runs.

    VOC: :data:`VOC_CLASSES`; COCO: :data:`COCO_CLASSES` (the official 80; a custom
    annotation file is checked again by the job); synthetic: ``synthetic.classes``.
    """
    name = config["dataset"]["name"]
    if name == "voc12":
        return VOC_CLASSES
    if name == "coco14":
        return COCO_CLASSES
    return tuple(config["synthetic"]["classes"])
