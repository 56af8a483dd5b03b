"""Generate the workflow's JSON schema from the stages' typed config dataclasses.

``python -m qaclims.core.schema > workflow/schemas/config.schema.yaml`` writes it; a test checks
the committed file equals the generated one, so the schema (types, defaults, descriptions,
``additionalProperties: false``) can never drift from the code that reads the config.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import types
import typing
from typing import Any

import yaml

# top-level key -> (module, dataclass name, description)
STAGES: dict[str, tuple[str, str, str]] = {
    "dataset": ("qaclims.data.dataset", "DatasetConfig", "Which data set and splits to read."),
    "synthetic": ("qaclims.data.synthetic", "SyntheticConfig", "The generated demo world."),
    "train_cam": ("qaclims.cam.train_cam", "TrainCamConfig", "Baseline CAM classifier (IRN)."),
    "make_cam": ("qaclims.cam.make_cam", "MakeCamConfig", "Multi-scale + flip CAM inference."),
    "eval_cam": ("qaclims.cam.eval_cam", "EvalCamConfig", "CAM mIoU and threshold sweep."),
    "train_tiny_blip": ("qaclims.qape.train_tiny_blip", "TinyBlipConfig", "Demo-only tiny BLIP."),
    "vqa": ("qaclims.qape.vqa_config", "VqaConfig", "QAPE: VQA questions and backend."),
    "corpus": ("qaclims.qape.corpus", "CorpusConfig", "QAPE: answers to fg/bg phrases."),
    "clip": ("qaclims.models.clip", "ClipConfig", "The CLIP model (text and masked image)."),
    "train_tiny_clip": ("qaclims.ritc.train_tiny_clip", "TinyClipConfig", "Demo-only tiny CLIP."),
    "text_features": ("qaclims.ritc.text_features", "TextFeatureConfig", "CLIP text features."),
    "train_ritc": ("qaclims.ritc.train_ritc", "TrainRitcConfig", "QA-CLIMS RITC CAM training."),
    "cam_to_ir_label": ("qaclims.refine.cam_to_ir_label", "IrLabelConfig", "CRF-refined seeds."),
    "train_irn": ("qaclims.refine.train_irn", "TrainIrnConfig", "Inter-pixel relation network."),
    "make_sem_seg": ("qaclims.refine.make_sem_seg", "SemSegConfig", "Random-walk pseudo masks."),
    "train_deeplab": (
        "qaclims.seg.train_deeplab",
        "TrainDeeplabConfig",
        "DeepLab on pseudo masks.",
    ),
    "infer_deeplab": (
        "qaclims.seg.infer_deeplab",
        "InferDeeplabConfig",
        "Multi-scale (+CRF) inference.",
    ),
}

WORKFLOW: dict[str, Any] = {
    "run": {
        "type": "string",
        "pattern": "^[A-Za-z0-9_.-]+$",
        "default": "demo",
        "description": "Name of this run; outputs go to results/<run>/.",
    },
    "device": {
        "type": "string",
        "enum": ["auto", "cpu", "cuda"],
        "default": "auto",
        "description": "auto: CUDA when a GPU is visible, else CPU.",
    },
    "methods": {
        "type": "array",
        "items": {"type": "string", "enum": ["cam", "ritc"]},
        "default": ["cam", "ritc"],
        "minItems": 1,
        "uniqueItems": True,
        "description": "CAM networks to infer and evaluate: baseline and/or QA-CLIMS.",
    },
    "splits": {
        "type": "object",
        "additionalProperties": False,
        "description": "Which manifest split each part of the DAG uses.",
        "properties": {
            "train": {
                "type": "string",
                "default": "train",
                "description": "Training split of every network (VOC: train_aug).",
            },
            "cam": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "default": ["train"],
                "description": "Splits make_cam (and refinement) run on.",
            },
            "eval_cam": {
                "type": "string",
                "default": "train",
                "description": "Split CAMs and pseudo masks are scored on (VOC: train).",
            },
            "val": {
                "type": "string",
                "default": "val",
                "description": "Split the segmentation network is scored on.",
            },
            "test": {
                "type": "string",
                "default": "",
                "description": "VOC only: an unlabelled split (test: 1,456 ids, from "
                "VOC2012test.tar in the same tree) DeepLab segments for the PASCAL VOC "
                "evaluation server; no label of it is read and nothing of it is scored here. "
                "Rule voc_submission packs its masks (CRF ones when infer_deeplab.crf.enabled) "
                "as results/<run>/submission/<split>.tar.gz. Its manifest comes from rule "
                "test_manifest, so it must not be in dataset.splits (adding it leaves the "
                "dataset rule and everything after it as they are). Empty: none.",
            },
        },
        "default": {},
    },
    "shards": {
        "type": "integer",
        "minimum": 1,
        "default": 4,
        "description": "Shards every per-image stage's outputs of a split are cut into (vqa, "
        "make_cam, cam_to_ir_label, make_sem_seg, infer_deeplab): one job per shard and "
        "stage, and shard k of a stage reads shard k upstream. Part of the file layout, "
        "like the data set: changing it redoes every per-image stage and what follows. How "
        "many shard jobs run at once is Snakemake's scheduling (--cores, --resources gpu, "
        "SLURM), never a setting.",
    },
    "keep_cams": {
        "type": "boolean",
        "default": True,
        "x-result": False,
        "description": "Keep make_cam's CAM folders. false: they are Snakemake temp() "
        "outputs, deleted once every job that reads them (eval_cam, cam_to_ir_label, "
        "make_sem_seg, the report's overlay_sample, which copies out the few CAMs the report "
        "shows) is done, and remade only if a later run needs them "
        "(a COCO run's CAMs take hundreds of GB). Changes no result.",
    },
    "gpus": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "GPUs per multi-GPU training job (a resource: changing it reruns nothing).",
        "properties": {
            k: {
                "type": "integer",
                "minimum": 0,
                "default": 1,
                "description": f"GPUs of the {k} job (torchrun starts one worker per GPU held).",
            }
            for k in ("train_ritc", "train_deeplab")
        },
    },
    "threads": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Threads per job kind (capped by --cores).",
        "properties": {
            "gpu_job": {
                "type": "integer",
                "minimum": 1,
                "default": 2,
                "description": "Threads of each GPU job, per GPU (a 4-GPU training job gets "
                "4x). 2 fits --cores 8 --resources gpu=4.",
            },
            "cpu_shard": {
                "type": "integer",
                "minimum": 1,
                "default": 4,
                "description": "Threads (worker processes) of each CPU job over images: "
                "cam_to_ir_label shards, the dataset build and the evaluations.",
            },
            "train_torch": {
                "type": "integer",
                "minimum": 0,
                "default": 0,
                "description": "torch CPU threads of each training worker, whatever --cores "
                "gives the job (CPU float sums depend on the thread count, so a CPU training's "
                "result does too). 0: the job's threads, shared among its workers.",
            },
        },
    },
    "released": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Released networks (the authors' CAM networks, a trained DeepLab), "
        "used in place of training them.",
        "properties": {
            "cam": {
                "type": "string",
                "default": "",
                "description": "res50_cam.pth (IRN resnet50_cam state dict): replaces "
                "train_cam (rule released_cam). Empty: train it.",
            },
            "ritc": {
                "type": "string",
                "default": "",
                "description": "res50_qa_clims.pth (QA-CLIMS network state dict): replaces "
                "train_ritc and the VQA, corpus and text stages before it (rule "
                "released_ritc). Empty: train it.",
            },
            "deeplab": {
                "type": "string",
                "default": "",
                "description": "a trained deeplab-pytorch DeepLabV2_ResNet101_MSC checkpoint "
                "(e.g. CLIMS's checkpoint_30000.pth, ASPP included): replaces train_deeplab "
                "(rule released_deeplab; train_deeplab.model must be v2, style caffe). Empty: "
                "train it.",
            },
        },
    },
    "refine": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "CRF seeds, IRN and random-walk pseudo masks.",
        "properties": {
            "enabled": {
                "type": "boolean",
                "default": True,
                "description": "Run the refinement (CRF seeds, IRN, random walk).",
            },
            "cam_source": {
                "type": "string",
                "enum": ["cam", "ritc"],
                "default": "ritc",
                "description": "Whose CAMs are refined.",
            },
        },
    },
    "deeplab": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Segmentation network trained on the pseudo masks.",
        "properties": {
            "enabled": {
                "type": "boolean",
                "default": True,
                "description": "Train, infer and score DeepLab on the pseudo masks.",
            }
        },
    },
    "submission": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "The archive of splits.test for the PASCAL VOC evaluation server "
        "(rule voc_submission).",
        "properties": {
            "competition": {
                "type": "string",
                "enum": ["comp5", "comp6"],
                "default": "comp5",
                "description": "the server's competition, the archive's folder "
                "results/VOC2012/Segmentation/<competition>_test_cls: comp5 (VOC data only; "
                "what CLIMS's segmentation/deeplabv2/eval.py writes) or comp6 (own data).",
            }
        },
    },
    "experiments": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Named variants of the run's settings, each over several seeds, in the "
        "same DAG (docs/EXPERIMENTS.md): every stage upstream of a variant's first override is "
        "the run's own and shared; each (variant, seed) computes the rest under "
        "results/<run>/experiments/<variant>/seed<seed>/, and rule compare_experiments "
        "tables them (mean, sd and n over seeds).",
        "properties": {
            "variants": {
                "type": "object",
                "default": {},
                "additionalProperties": {"type": ["object", "null"]},
                "description": "variant name -> overrides of stage settings from vqa on "
                "(nested like the config, e.g. {train_ritc: {w_bg: 0.0}}), plus an optional "
                "seeds list of its own. Empty: no experiment.",
            },
            "seeds": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "minItems": 1,
                "default": [0],
                "description": "seeds of every variant without its own: the seed setting of "
                "every seeded stage a variant computes itself.",
            },
            "reference": {
                "type": "string",
                "default": "",
                "description": "the variant the comparison's per-class deltas are taken "
                "against (empty: the first).",
            },
            "until": {
                "type": "string",
                "enum": ["eval_cam", "eval_seeds", "eval_sem_seg", "eval_deeplab"],
                "default": "eval_deeplab",
                "description": "the last evaluation each (variant, seed) runs (within what "
                "refine.enabled and deeplab.enabled allow).",
            },
            "from": {
                "type": "string",
                "default": "train_ritc",
                "description": "the stage where seeds start: it and every stage after it are "
                "computed per (variant, seed) even for a variant that overrides nothing "
                "before it.",
            },
        },
    },
    "report": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Figures and tables for snakemake --report.",
        "properties": {
            "enabled": {
                "type": "boolean",
                "default": True,
                "description": "Build the report's figures and tables (rule report).",
            },
            "num_overlays": {
                "type": "integer",
                "minimum": 0,
                "default": 6,
                "description": "Val images shown as CAM / mask overlays.",
            },
        },
    },
}


def _field_docs(cls: type) -> dict[str, str]:
    """``name: text`` lines of a dataclass docstring (continuation lines appended)."""
    docs: dict[str, str] = {}
    current = None
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        m = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$", line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            current = m.group(1)
            docs[current] = m.group(2).strip()
        elif current and line.startswith((" ", "\t")) and line.strip():
            docs[current] += " " + line.strip()
        else:
            current = None
    return docs


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def type_schema(tp: Any) -> dict[str, Any]:
    """JSON schema of one annotated type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [type_schema(a) for a in args]}
    if tp is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return dataclass_schema(tp)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return {"type": "array", "items": type_schema(item)}
    if origin is dict:
        return {
            "type": "object",
            "additionalProperties": type_schema(args[1]) if len(args) == 2 else {},
        }
    if origin is typing.Literal:
        return {"enum": list(args)}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    return {}


_KEYWORDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _add_constraints(s: dict[str, Any], meta: Any) -> None:
    """JSON-schema keywords for a field's :func:`qaclims.core.config.setting` constraints."""
    target = s["items"] if s.get("type") == "array" and "items" in s else s
    for key, keyword in _KEYWORDS.items():
        if key in meta:
            target[keyword] = meta[key]
    if "choices" in meta:
        target["enum"] = list(meta["choices"])
    if "min_items" in meta:
        s["minItems"] = meta["min_items"]


def dataclass_schema(cls: type, description: str | None = None) -> dict[str, Any]:
    """Object schema of a config dataclass, with defaults and field descriptions."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        s = type_schema(hints[f.name])
        _add_constraints(s, f.metadata)
        if "doc" in f.metadata:
            s["description"] = f.metadata["doc"]
        elif f.name in docs:
            s["description"] = docs[f.name]
        if not f.metadata.get("result", True):
            s["description"] = s.get("description", "") + " (cannot change a result: never reruns)"
            s["description"] = s["description"].strip()
            s["x-result"] = False
        if f.default is not dataclasses.MISSING:
            s["default"] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            s["default"] = _plain(f.default_factory())
        else:
            required.append(f.name)
        props[f.name] = s
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    desc = description or (inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0] or None)
    if desc:
        out["description"] = " ".join(desc.split())
    out["properties"] = props
    if required:
        out["required"] = required
    return out


def build() -> dict[str, Any]:
    """The whole config schema: workflow-level keys plus one section per stage."""
    props: dict[str, Any] = dict(WORKFLOW)
    for key, (mod, name, desc) in STAGES.items():
        cls = getattr(importlib.import_module(mod), name)
        sec = dataclass_schema(cls, desc)
        sec["default"] = {}
        props[key] = sec
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "QA-CLIMS workflow config. Generated by `python -m qaclims.core.schema`; "
        "do not edit by hand.",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "required": ["run", "dataset"],
    }


def dump() -> str:
    """The schema as YAML text."""
    return "# Generated by `python -m qaclims.core.schema`; do not edit.\n" + yaml.safe_dump(
        build(), sort_keys=False, width=100
    )


if __name__ == "__main__":
    sys.stdout.write(dump())
