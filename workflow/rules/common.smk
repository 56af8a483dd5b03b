# Config validation, paths and input functions shared by the other .smk files.
import os
import sys
from argparse import Namespace

import yaml

SRC_ROOT = os.path.join(workflow.basedir, "src")
SRC = os.path.join(SRC_ROOT, "qaclims")
SCRIPTS = os.path.join(workflow.basedir, "workflow", "scripts")
if SRC_ROOT not in sys.path:
    sys.path.insert(
        0, SRC_ROOT
    )  # the workflow's own library, wherever Snakemake runs from
from qaclims.workflow import preflight  # noqa: E402  standard library only at import
from qaclims.workflow import codegraph  # noqa: E402
from qaclims.workflow import experiments  # noqa: E402

# Every job (local, SLURM, any conda env) imports the library from this checkout: the env
# files hold only third-party packages, and nothing depends on where Snakemake copies them.
preflight.put_on_pythonpath(SRC_ROOT)

with open(
    os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
) as _f:
    SCHEMA = yaml.load(_f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
# The schema's checks and defaults (what snakemake.utils.validate does, without loading the
# schema a second time with the pure-Python YAML loader).
preflight.validate_config(config, SCHEMA)

RUN = config["run"]
# Answer files may name this run's folder as {run} (the demo's synthetic answers do).
for _kind in ("fg", "bg"):
    _pre = config["vqa"]["precomputed"]
    _pre[_kind] = _pre[_kind].replace("{run}", RUN)
config["vqa"]["model"] = config["vqa"]["model"].replace("{run}", RUN)
SPLITS = config["splits"]
SHARDS = config["shards"]
METHODS = config["methods"]


def _check_splits():
    known = set(config["dataset"]["splits"])
    wanted = set(SPLITS["cam"]) | {SPLITS["train"], SPLITS["eval_cam"], SPLITS["val"]}
    missing = sorted(wanted - known)
    if missing:
        raise ValueError(
            f"config splits.* name {missing} but dataset.splits builds only {sorted(known)}"
        )
    if SPLITS["train"] not in SPLITS["cam"]:
        raise ValueError(
            f"config splits.train ({SPLITS['train']}) must be one of splits.cam {SPLITS['cam']}"
        )


_check_splits()
preflight.check_test_split(config)
# Paths that must exist, and every stage's typed config, before any job runs.
preflight.check_paths(config)
preflight.check_stage_configs(
    config, SRC_ROOT, cache_dir=os.path.join(".snakemake", "qaclims")
)
# Offline (HF_HUB_OFFLINE): every pretrained model the run downloads is cached. Checked by
# the main process only: a SLURM job's parse would pay the libraries' imports again.
if workflow.is_main_process:
    preflight.check_pretrained(config, cache_dir=os.path.join(".snakemake", "qaclims"))


def _check_cell_config(cfg):
    """What the run's own config passes, for one experiment variant's config."""
    preflight.validate_config(cfg, SCHEMA)
    preflight.check_paths(cfg)  # a variant's released network file, for one
    preflight.check_stage_configs(
        cfg, SRC_ROOT, cache_dir=os.path.join(".snakemake", "qaclims")
    )
    if workflow.is_main_process:
        preflight.check_pretrained(cfg, cache_dir=os.path.join(".snakemake", "qaclims"))


# Experiments (workflow/rules/experiments.smk): every variant checked before any job runs.
experiments.check(config, SCHEMA, _check_cell_config)
_DATA_FINGERPRINT = []


def data_fingerprint(wildcards):
    """The data set's (path, size, mtime) digest, a params of the dataset rule: editing an
    image, label, annotation or split list reruns the manifests and what follows. Computed
    once per parse, and only where a dataset job is planned (a SLURM job of another rule
    never stats the whole data set)."""
    if not _DATA_FINGERPRINT:
        _DATA_FINGERPRINT.append(preflight.data_fingerprint(config))
    return _DATA_FINGERPRINT[0]


def test_fingerprint(wildcards):
    """data_fingerprint of splits.test alone: its list and images (rule test_manifest)."""
    return preflight.data_fingerprint(config, [SPLITS["test"]], labelled=False)


def R(*parts):
    """Path under this run's results folder."""
    return os.path.join("results", RUN, *parts)


def LOG(*parts):
    return os.path.join("logs", RUN, *parts)


def BENCH(*parts):
    return os.path.join("results", RUN, "benchmarks", *parts)


def RESUME(*parts):
    """Resume-state folder: outside every declared output, so Snakemake never deletes it."""
    return os.path.join("results", RUN, ".resume", *parts)


def cam_output(path):
    """make_cam's shard folder: temp() when ``keep_cams`` is false."""
    out = directory(path)
    return out if config["keep_cams"] else temp(out)


def code(script):
    """Code digests of a rule's script and of the library files it imports (transitively),
    a param: editing one's code reruns that rule and what follows; touching one, or editing
    only its comments or docstrings, reruns nothing (profiles/default leaves Snakemake's
    mtime-based ``code`` trigger out).
    """
    path = os.path.join(SCRIPTS, f"{script}.py")
    digests = codegraph.code_digests(path, SRC_ROOT)
    digests[f"workflow/scripts/{script}.py"] = codegraph.script_digest(path)
    # one string, not a dict: Snakemake applies wildcards to every param item of every job
    return " ".join(f"{path}:{digest}" for path, digest in sorted(digests.items()))


codegraph.use_scan_cache(os.path.join(".snakemake", "qaclims", "imports.json"))


def _result_only(value, schema):
    props = schema.get("properties")
    if not isinstance(value, dict) or not props:
        return value
    return {
        k: _result_only(v, props.get(k, {}))
        for k, v in value.items()
        if props.get(k, {}).get("x-result", True)
    }


def result_cfg(key):
    """config[key] without the settings that cannot change a result (schema x-result: false).

    This is what a rule tracks as params, so changing workers, logging or resume cadence
    or an inference batch size reruns nothing; scripts read the whole slice from config.
    """
    return _result_only(config[key], SCHEMA["properties"][key])


def shard_ids():
    """Shard names of every per-image stage: one layout through the chain."""
    return [f"{k:03d}" for k in range(SHARDS)]


def answers_lemmatised():
    """Whether the corpus reads the reference's lemmatised answers (its released files)."""
    v = config["vqa"]
    p = v["precomputed"]
    return (
        v["backend"] == "precomputed"
        and p["format"] == "qaclims_npy"
        and p["answer_field"] == "answers"
    )


def manifest(split):
    return R("data", "manifest", f"{split}.parquet")


def cam_dirs(model, splits=None):
    return expand(
        R("make_cam", model, "{split}", "{shard}"),
        split=splits or SPLITS["cam"],
        shard=shard_ids(),
    )


def eval_cam_splits(split):
    """The CAM splits eval_cam reads for ``split``: itself when make_cam runs on it, else
    every CAM split (VOC's train is inside train_aug)."""
    return [split] if split in SPLITS["cam"] else SPLITS["cam"]


def eval_cam_dirs(wildcards):
    """The make_cam folders eval_cam reads: its own split's when make_cam runs on it (COCO's
    val), else every CAM split (VOC's train is inside train_aug); never a split it does not
    evaluate, whose CAMs (COCO's 82k train images) nothing else may need."""
    return cam_dirs(wildcards.model, eval_cam_splits(wildcards.split))


def cam_weights(wildcards):
    if wildcards.model == "cam":
        return R("train_cam", "model.safetensors")
    return R("train_ritc", "model.safetensors")


def dataset_root():
    if config["dataset"]["name"] == "synthetic":
        return R("synthetic")
    return config["dataset"]["root"]


def dataset_extra_outputs():
    """COCO's evaluation masks are made by the dataset rule: declared, so they never go stale."""
    d = config["dataset"]
    if d["name"] != "coco14":
        return {}
    return {"masks": directory(d["coco14"]["mask_dir"] or R("data", "coco_masks"))}


def dataset_inputs(wildcards):
    if config["dataset"]["name"] == "synthetic":
        return {"root": R("synthetic")}
    return {}


def vqa_inputs(wildcards):
    """Answer files of the precomputed backend (the synthetic tree when they live in it), or
    the tiny BLIP the demo trains (rule train_tiny_blip)."""
    v = config["vqa"]
    if v["backend"] == "blip" and v["model"] == R("train_tiny_blip"):
        return {"blip": R("train_tiny_blip")}  # the demo's own tiny BLIP
    if v["backend"] != "precomputed":
        return {}
    files = {k: v["precomputed"][k] for k in ("fg", "bg") if v["precomputed"][k]}
    synth = R("synthetic")
    if any(f.startswith(synth + os.sep) for f in files.values()):
        return {"synthetic": synth}
    return files


def clip_weight_inputs(wildcards):
    """The tiny CLIP trained by the workflow (synthetic demo); pretrained CLIPs need none."""
    if config["clip"]["name"] == "tiny":
        return {"clip_weights": R("train_tiny_clip", "model.safetensors")}
    return {}


def irn_backbone_inputs(wildcards):
    """train_cam's network when IRN's frozen backbone comes from it (the demo)."""
    if config["train_irn"]["backbone_from"] == "train_cam":
        return {"cam": R("train_cam", "model.safetensors")}
    return {}


def pseudo_dirs(split):
    return expand(
        R("make_sem_seg", refine_source(), split, "{shard}"),
        shard=shard_ids(),
    )


def crf_label(variant):
    """How a DeepLab variant is named in the report: ``CRF`` or ``no CRF``."""
    return "CRF" if variant == "crf" else "no CRF"


def deeplab_variants():
    return ["nocrf", "crf"] if config["infer_deeplab"]["crf"]["enabled"] else ["nocrf"]


def submission_variant():
    """The masks of splits.test the server gets: DeepLab's final ones (after the CRF when
    infer_deeplab runs it, as the paper's test figures are)."""
    return deeplab_variants()[-1]


def ir_label_dirs(model, split):
    return expand(
        R("cam_to_ir_label", model, split, "{shard}"),
        shard=shard_ids(),
    )


def refine_source():
    return config["refine"]["cam_source"]


def gpus(stage):
    """GPUs a training job asks for: a resource, never a param (changing it reruns nothing)."""
    return config["gpus"][stage]


def eval_targets():
    return expand(
        R("eval_cam", "{model}", SPLITS["eval_cam"], "summary.json"), model=METHODS
    )


METHOD_LABEL = {"cam": "CAM (baseline)", "ritc": "CAM (QA-CLIMS)"}


def overlay_sources():
    """The report's overlay columns after image and ground truth, in order: source key (the
    ``overlay_sample`` wildcard) -> (column label, kind ``cam``/``labels``, the shard
    folders its maps are copied from). CAM columns read eval_cam's folders, so a ``temp()``
    CAM folder is gone once eval_cam, the refinement and its overlay sample have read it,
    not kept until the report at the very end."""
    ev = SPLITS["eval_cam"]
    out = {}
    for m in METHODS:
        out[f"cam_{m}"] = (
            METHOD_LABEL[m],
            "cam",
            eval_cam_dirs(Namespace(model=m, split=ev)),
        )
    if config["refine"]["enabled"]:
        dirs = expand(
            R("make_sem_seg", refine_source(), "{split}", "{shard}"),
            split=SPLITS["cam"],
            shard=shard_ids(),
        )
        out["pseudo"] = ("pseudo masks", "labels", dirs)
    if config["deeplab"]["enabled"] and SPLITS["val"] == ev:
        v = deeplab_variants()[-1]  # DeepLab's predictions on the overlays' images
        dirs = expand(R("infer_deeplab", ev, v, "{shard}"), shard=shard_ids())
        out[f"deeplab_{v}"] = (f"DeepLab ({crf_label(v)})", "labels", dirs)
    return out


def overlay_sample(source):
    return R("report", "overlays", f"{source}.npz")


def report_plan():
    """What the report shows, in order (a param of the report rule, so no order or label
    is encoded in input names): ``stages`` (label, summary, per_class, sweep or None, in
    the order of the stage table), ``histories`` (stage -> history table), ``overlays``
    (label, kind, sample file per column of :func:`overlay_sources`), ``corpus``,
    ``manifest``, ``submissions`` (rule voc_submission's summaries).
    """
    ev = SPLITS["eval_cam"]
    plan = {
        "stages": [],
        "histories": {},
        "overlays": [],
        "corpus": None,
        "submissions": [],
    }

    def stage(label, base, sweep=False):
        plan["stages"].append(
            {
                "label": label,
                "summary": os.path.join(base, "summary.json"),
                "per_class": os.path.join(base, "per_class.parquet"),
                "sweep": os.path.join(base, "sweep.parquet") if sweep else None,
            }
        )

    for m in METHODS:
        stage(METHOD_LABEL[m], R("eval_cam", m, ev), sweep=True)
    if not config["released"]["cam"]:
        plan["histories"]["train_cam"] = R("train_cam", "history.parquet")
    if "ritc" in METHODS and not config["released"]["ritc"]:
        plan["histories"]["train_ritc"] = R("train_ritc", "history.parquet")
        plan["corpus"] = R("corpus", "stats.parquet")
    src = refine_source()
    if config["refine"]["enabled"]:
        stage("seeds (CRF, confident)", R("eval_seeds", src, ev))
        stage("pseudo masks (IRN)", R("eval_sem_seg", src, ev))
        plan["histories"]["train_irn"] = R("train_irn", src, "history.parquet")
    if config["deeplab"]["enabled"]:
        val = SPLITS["val"]
        for v in deeplab_variants():
            stage(f"DeepLab {val} ({crf_label(v)})", R("eval_deeplab", val, v))
        if not config["released"]["deeplab"]:
            plan["histories"]["train_deeplab"] = R("train_deeplab", "history.parquet")
        # rule voc_submission's summary, quoted under the stage table
        if SPLITS["test"]:
            plan["submissions"] = [R("submission", f"{SPLITS['test']}.json")]
    for key, (label, kind, _) in overlay_sources().items():
        plan["overlays"].append(
            {"label": label, "kind": kind, "sample": overlay_sample(key)}
        )
    plan["manifest"] = manifest(ev)
    plan["classes"] = R("data", "classes.json")
    return plan


def report_inputs(wildcards):
    """Every file of :func:`report_plan`, once."""
    plan = report_plan()
    files = [plan["manifest"], plan["classes"]] + list(plan["histories"].values())
    for s in plan["stages"]:
        files += [s["summary"], s["per_class"]] + ([s["sweep"]] if s["sweep"] else [])
    files += [o["sample"] for o in plan["overlays"]]
    if plan["corpus"]:
        files.append(plan["corpus"])
    files += plan["submissions"]
    return list(dict.fromkeys(files))


def all_targets():
    t = [R("config.yaml")] + eval_targets()
    if config["refine"]["enabled"]:
        t.append(R("eval_seeds", refine_source(), SPLITS["eval_cam"], "summary.json"))
        t.append(R("eval_sem_seg", refine_source(), SPLITS["eval_cam"], "summary.json"))
    if config["deeplab"]["enabled"]:
        t += expand(
            R("eval_deeplab", SPLITS["val"], "{variant}", "summary.json"),
            variant=deeplab_variants(),
        )
        if SPLITS["test"]:  # rule voc_submission
            t.append(R("submission", f"{SPLITS['test']}.tar.gz"))
    if config["report"]["enabled"]:
        t.append(R("report", "index.html"))
    if config["experiments"]["variants"]:
        t.append(R("experiments", "comparison.csv"))  # rule compare_experiments
    return t


# ---------------------------------------------------------------- experiments
# Paths and settings of the cells of config `experiments` (workflow/rules/experiments.smk).
VARIANTS = list(config["experiments"]["variants"])
CELLS = experiments.cells(config)
_CELL_CONFIGS = {}
_FOLDERS = {}
_SAME = {}


def X(*parts):
    """Path pattern under a cell's folder (wildcards exp and cell: seed<s> or common)."""
    return os.path.join("results", RUN, "experiments", "{exp}", "{cell}", *parts)


def XLOG(*parts):
    return os.path.join("logs", RUN, "experiments", "{exp}", "{cell}", *parts)


def XBENCH(*parts):
    return X("benchmarks", *parts)


def XRESUME(*parts):
    return os.path.join(
        "results", RUN, ".resume", "experiments", "{exp}", "{cell}", *parts
    )


def _seed(wc):
    if wc.cell == experiments.COMMON:
        return experiments.seeds_of(config, wc.exp)[0]
    return int(wc.cell.removeprefix("seed"))


def at(wc, stage, *parts):
    """Where a job of cell ``wc`` reads ``stage``'s output: the variant's own folder when
    the stage is in its reach (seed<s> or common), else the run's (computed once for all).
    """
    key = (wc.exp, _seed(wc), stage)
    if key not in _FOLDERS:
        if key[:2] not in _SAME:  # once per cell: it merges and compares whole configs
            _SAME[key[:2]] = experiments.same_as_run(config, *key[:2])
        _FOLDERS[key] = experiments.folder(config, *key, same=_SAME[key[:2]])
    where = _FOLDERS[key]
    if where is None:
        return R(stage, *parts)
    return os.path.join("results", RUN, "experiments", wc.exp, where, stage, *parts)


def cell_cfg(wc):
    key = (wc.exp, wc.cell)
    if key not in _CELL_CONFIGS:
        _CELL_CONFIGS[key] = experiments.job_config(
            config, {"exp": wc.exp, "cell": wc.cell}
        )
    return _CELL_CONFIGS[key]


def xresult(key):
    """A param: the cell's ``config[key]`` without runtime-only settings."""
    return lambda wc: _result_only(cell_cfg(wc)[key], SCHEMA["properties"][key])


def xsetting(*keys):
    """A param: one nested setting of the cell's config (e.g. train_cam.model)."""

    def get(wc):
        value = cell_cfg(wc)
        for k in keys:
            value = value[k]
        return value

    return get


def _cell_vqa_inputs():
    """vqa's own inputs, the demo's tiny BLIP read from where the cell has it."""
    files = dict(vqa_inputs(None))
    if "blip" in files:
        files["blip"] = lambda wc: at(wc, "train_tiny_blip")
    return files


def _cell_clip_weights():
    if clip_weight_inputs(None):
        return {
            "clip_weights": lambda wc: at(wc, "train_tiny_clip", "model.safetensors")
        }
    return {}


def _cell_irn_backbone(wc):
    if cell_cfg(wc)["train_irn"]["backbone_from"] == "train_cam":
        return {"cam": at(wc, "train_cam", "model.safetensors")}
    return {}


def _cells_eval_cam_dirs(wc):
    return [
        at(wc, "make_cam", wc.model, s, k)
        for s in eval_cam_splits(wc.split)
        for k in shard_ids()
    ]


def comparison_plan():
    """Rows of the comparison: one per (variant, seed, measured stage), with the files
    of that cell's evaluation (its own, or the run's where the variant does not reach
    it); a param of compare_experiments."""
    m, ev, val = refine_source(), SPLITS["eval_cam"], SPLITS["val"]
    where = {
        "eval_cam": ("eval_cam", m, ev),
        "eval_seeds": ("eval_seeds", m, ev),
        "eval_sem_seg": ("eval_sem_seg", m, ev),
    }
    rows = []
    for c in CELLS:
        wc = Namespace(exp=c.variant, cell=f"seed{c.seed}")
        for stage in experiments.targets_until(config):
            parts = [where[stage]] if stage in where else []
            if stage == "eval_deeplab":
                parts = [("eval_deeplab", val, v) for v in deeplab_variants()]
            for p in parts:
                label = stage if stage != "eval_deeplab" else f"eval_deeplab_{p[2]}"
                base = at(wc, *p)
                rows.append(
                    {
                        "variant": c.variant,
                        "seed": c.seed,
                        "stage": label,
                        "summary": os.path.join(base, "summary.json"),
                        "per_class": os.path.join(base, "per_class.parquet"),
                    }
                )
    return rows
