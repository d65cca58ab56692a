"""One typed configuration: defaults < model preset < cfg=YAML file < key=value.

OmegaConf merges the layers (YAML and dotted ``key=value`` lists); pydantic validates the
result, so a bad key or value is refused with a message that names the key, the allowed
values and the closest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator


class ConfigError(ValueError):
    """A configuration the user must fix; the message says how."""


class KeysRequested(Exception):
    """``--help`` after a sub-command's action: the message lists its keys and defaults."""


Optimizer = Literal["auto", "sgd", "adam", "adamw", "nadam", "radam", "rmsprop", "lars", "lamb"]
Scheduler = Literal["cosine", "step", "onecycle", "linear", "constant", "sgdr"]


class TrainConfig(BaseModel):
    """Every setting of a run. ``key=value`` on the command line mirrors these fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # what and where
    model: str = Field("dfine-n", description="model name (see `detforge models`) or a .pt checkpoint")
    data: str | None = Field(None, description="dataset folder, data.yaml, or None for the built-in set")
    pretrained: str | None = Field(None, description="weights to start from: a file, or a name published for the "
                                   "model (coco, obj2coco, ...; `detforge models` lists them), downloaded once")
    num_classes: int | None = Field(None, ge=1, description="override the class count (default: from data)")
    anchors: str | list[float] = Field(
        "default", description="anchor-based models: default (the model's own, scaled to imgsz), auto (k-means "
        "on the train boxes at imgsz) or w1,h1,w2,h2,... in pixels at imgsz")
    asff: bool = Field(False, description="YOLOv3: adaptively spatial feature fusion of the pyramid levels")
    project: str = "runs"
    name: str | None = None
    exist_ok: bool = False
    resume: bool | str = False

    # input
    imgsz: int = Field(640, ge=32, description="square training/validation input size")
    batch: float = Field(16, description="images per step; -1 auto, 0<x<1 fraction of GPU memory")
    workers: int = Field(2, ge=0)
    device: str = Field("auto", description="auto, cpu, cuda, 0 or 0,1,2,3")
    fraction: float = Field(1.0, gt=0, le=1, description="train on this deterministic fraction of images")
    cache: Literal["false", "ram", "disk"] = "false"
    resize_mode: Literal["stretch", "letterbox"] = "stretch"
    multi_scale: float = Field(0.0, ge=0, lt=1, description="per-batch size in [1-x, 1+x] * imgsz")
    ignore_background_epochs: int = Field(0, ge=0)

    # schedule
    epochs: int = Field(100, ge=1)
    optimizer: Optimizer = "auto"
    lr0: float | None = Field(None, gt=0, description="initial lr (default: from the family defaults, else the optimizer's)")
    lrf: float = Field(0.01, ge=0, le=1, description="final lr as a fraction of lr0")
    momentum: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, gt=0, lt=1, description="Adam-family second-moment decay")
    weight_decay: float | None = Field(None, ge=0)
    backbone_lr_mult: float | None = Field(None, gt=0, description="backbone lr = lr0 * this")
    head_lr_mult: float | None = Field(None, gt=0, description="lr of everything outside the backbone (neck, encoder, decoder, heads) = lr0 * this; default 1, D-FINE from scratch on small sparse objects 1.5 (its backbone_lr_mult stays 3), so a lr0 you set scales both")
    scheduler: Scheduler = "cosine"
    lr_tail_epochs: float = Field(0, ge=0, description="cosine/linear/onecycle: the decay reaches lrf this many epochs before the end and the lr stays at lrf for them (DEIM's flat tail)")
    warmup_epochs: float = Field(3.0, ge=0)
    warmup_iters: int | None = Field(None, ge=0, description="overrides warmup_epochs when set")
    warmup_max_fraction: float = Field(0.1, ge=0, le=1, description="cap a warm-up that came from defaults at this fraction of the run's steps; 0 = no cap (a warm-up you set is never capped)")
    warmup_bias_lr: float = Field(0.0, ge=0)
    step_milestones: list[float] = Field(default_factory=lambda: [0.7, 0.9])
    step_gamma: float = Field(0.1, gt=0, le=1)
    sgdr_cycle: float = Field(10, gt=0, description="first SGDR cycle length in epochs")
    sgdr_mult: float = Field(1.0, ge=1)
    sgdr_decay: float = Field(1.0, gt=0, le=1)
    warmup_every_cycle: bool = Field(False, description="sgdr: repeat the warm-up at every restart")
    step_per_epoch: bool = Field(False, description="step the lr once per epoch instead of every iteration (recipe=cooldet does)")
    lr_scale: Literal["none", "linear", "sqrt"] = "none"
    nominal_batch: int = Field(64, ge=1)
    lars_trust_coef: float = Field(0.001, gt=0)
    adapt_all: bool = Field(False, description="LARS/LAMB adapt and decay biases and norms too")
    trust_ratio_every: int | None = Field(None, ge=0, description="log LARS/LAMB per-layer trust ratios (local lr) to trust_ratio.csv every N steps; default 50 with lars/lamb, 0 off")

    # recipe
    ema: bool = True
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    ema_warmup: int | Literal["auto"] = Field(
        2000, description="optimizer steps of the EMA decay ramp; auto: sized from the run's length so the final "
        "average spans about its last 15%")
    precise_bn: int = Field(0, ge=0, description="re-measure the evaluated weights' BatchNorm statistics on up to this "
                            "many un-augmented training images before each validation (what best.pt / last.pt keep); "
                            "0 off; D-FINE from scratch sets 256 from the data when the training images average at "
                            "most 2 objects")
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    accumulate: int = Field(1, ge=1)
    clip_grad: float = Field(0.0, ge=0, description="max grad norm; 0 disables")
    patience: int = Field(0, ge=0, description="epochs without fitness gain before stopping; 0 off")
    save_period: int = Field(0, ge=0)
    checkpoint_every: int = Field(0, ge=0, description="also write last.pt every N optimizer steps inside an epoch")
    checkpoint_minutes: float = Field(30.0, ge=0, description="also write last.pt inside an epoch when this many minutes passed; 0 off")
    val_period: int = Field(1, ge=1)
    seed: int = 0
    deterministic: bool = False
    max_bad_steps: int = Field(5, ge=1, description="non-finite losses in a row that stop the run")
    recipe: Literal["default", "cooldet"] = "default"

    # distributed
    parallel: Literal["ddp", "zero1", "fsdp"] = "ddp"
    sync_bn: bool = False
    fsdp_reshard: bool = Field(True, description="fsdp: reshard parameters after forward; false = ZeRO-2-like")
    dist_timeout: float = Field(1800.0, gt=0, description="seconds a multi-process collective waits for the other "
                                "processes; then the run fails, naming the rank and the operation")

    # augmentation
    mosaic: float = Field(1.0, ge=0, le=1)
    close_mosaic: int = Field(10, ge=0)
    open_mosaic: int = Field(0, ge=0)
    mosaic_zoom: float = Field(1.0, ge=0.25, le=1, description="scale of the mosaic's 2x2 canvas on the output: 1 keeps each tile at the training scale and shows about a quarter of each (YOLO); 0.5 shows four whole images at half scale (DEIM's Dense O2O: more, uncut objects per image)")
    mixup: float = Field(0.0, ge=0, le=1)
    mixup_mode: Literal["overlay", "geometry"] = "overlay"
    cutout: float = Field(0.0, ge=0, le=1)
    degrees: float = Field(0.0, ge=0, le=180)
    translate: float = Field(0.1, ge=0, le=1)
    scale: float = Field(0.5, ge=0, lt=1, description="scale jitter: each image or mosaic drawn at [1-x, 1+x] times the training scale; D-FINE from scratch sets 0.1 where it sets copy_blend 1.0 (small sparse objects)")
    shear: float = Field(0.0, ge=0, le=90)
    hsv_h: float = Field(0.015, ge=0, le=1)
    hsv_s: float = Field(0.7, ge=0, le=1)
    hsv_v: float = Field(0.4, ge=0, le=1)
    hsv_mode: Literal["matrix", "opencv"] = Field(
        "matrix", description="matrix: one 3x3 colour matrix in YIQ (fast, lossless at zero gains); "
        "opencv: OpenCV's uint8 HSV round trip, as the YOLO family does")
    brightness: float = Field(0.0, ge=0, le=1)
    gamma: float = Field(0.0, ge=0, le=1)
    blur: float = Field(0.0, ge=0, le=1)
    noise: float = Field(0.0, ge=0, le=1)
    to_gray: float = Field(0.0, ge=0, le=1)
    fliplr: float = Field(0.5, ge=0, le=1)
    flipud: float = Field(0.0, ge=0, le=1)
    rot90: float = Field(0.0, ge=0, le=1)
    min_box_size: float = Field(2.0, ge=0, description="boxes smaller (px) after augmentation are dropped")
    min_box_visibility: float = Field(0.1, ge=0, le=1, description="minimum kept fraction of a box's area")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mal: bool | None = Field(None, description="DETRs: matchability-aware classification loss (DEIM) instead of VFL; default: the model's recipe")
    mal_gamma: float | None = Field(None, gt=0, description="DETRs with MAL: exponent of the IoU in the positive target and of the score in the negatives' weight (lower: higher targets for poor matches and a stronger push on wrong classes); default: the model's recipe (D-FINE: 1.0 from scratch, 1.5 from official weights)")
    cls_weight: float | None = Field(None, gt=0, description="DETRs: weight of the classification term (VFL or MAL) beside the box terms (L1 5, GIoU 2); default: the criterion's 1.0; D-FINE from scratch sets 2.0 from the data when the training images average at most 2 objects")
    dup_weight: float = Field(1.0, ge=0, description="DETRs: training-only factor on the classification push-down of duplicates (unmatched queries whose box overlaps an object of that class at IoU >= 0.5, what NMS would remove); 1 off")
    class_ce: float = Field(0.0, ge=0, description="DETRs: weight of a training-only softmax cross-entropy over the classes of the matched queries, which asks which class a found object is apart from whether it is one; 0 off")
    o2m: int = Field(0, ge=0, description="DETRs: training-only one-to-many query group (H-DETR), each object matched this many times; 0 off")
    o2m_queries: int | None = Field(None, ge=1, description="DETRs: queries in the one-to-many group (default: the model's query count)")
    enc_o2m: int = Field(0, ge=0, description="DETRs: training-only dense supervision of the encoder: every encoder cell scored, each object matched to this many cells (not only the cells chosen as queries); 0 off")
    dense_cls: float = Field(0.0, ge=0, description="D-FINE: weight of a training-only per-cell class head on the encoder's maps (focal loss on every cell in the middle of an object); 0 off")
    dn_queries: int | None = Field(None, ge=0, description="DETRs: contrastive denoising budget (training only): groups of each image's boxes, as many as this holds for the batch's fullest image; 0 off; default: the model's (100 for D-FINE)")
    dn_box_noise: float | None = Field(None, ge=0, description="DETRs: denoising box jitter in half box sizes (positives < 1x, negatives 1-2x this); default: the model's (1.0)")
    dn_label_noise: float | None = Field(None, ge=0, le=1, description="DETRs: twice the share of denoising labels flipped at random; default: the model's (0.5)")
    dn_label_drop: float | None = Field(None, ge=0, le=1, description="DETRs: share of denoising queries given no label (the 'no class' embedding), so their class is read from the image alone; default: the model's (0)")
    copy_blend: float = Field(0.0, ge=0, le=1, description="probability of blending objects cut from other training images into an image (DEIMv2 Copy-Blend); stops with close_mosaic; D-FINE from scratch sets 1.0 from the data when the training images average at most 2 objects whose median side is under a tenth of the image")

    # evaluation
    conf: float = Field(0.5, ge=0, le=1, description="confidence threshold for P/R/F1/IoU")
    iou_thr: float = Field(0.5, gt=0, lt=1, description="IoU above which a prediction is a TP")
    max_det: int = Field(300, ge=1)
    decoder_layers: int | None = Field(
        None, ge=1, description="DETRs, when loading a .pt for val/predict/export: predict from the first N "
        "decoder layers (faster per image, usually a little less accurate); default all")
    fitness: Literal["map50_f1", "map50_95", "map50", "f1"] = "map50_f1"

    # val / predict / export / eval / bench
    split: Literal["train", "val", "test"] = "val"
    source: str | None = Field(None, description="image, folder, glob or video for predict")
    save: bool = True
    save_txt: bool = False
    save_json: bool = False
    save_gt: bool = Field(False, description="predict on a dataset: also write its ground truth as gt.json (COCO, "
                          "the ids of predictions.json), for `detforge eval`")
    save_dir: str | None = None
    cut_padding: bool = False
    format: Literal["onnx", "openvino", "tensorrt"] = "onnx"
    dynamic: bool = False
    half: bool = False
    opset: int = Field(17, ge=11)
    gt: str | None = None
    pred: str | None = None
    backend: str | None = None
    threads: int | None = Field(None, ge=1)

    # compare (`detforge compare`, detforge/compare/): these keys belong to that command only.
    # There, data= may list several datasets (a,b,c) and batch= is the latency batch (default 1).
    models: str | list[str] | None = Field(None, description="compare: models to train and rank, e.g. dfine-n,fcos-n")
    runs: str | list[str] | None = Field(None, description="compare: finished run folders to rank as they are, e.g. runs/a,runs/b")
    runtime: Literal["onnxruntime", "openvino", "torch"] = Field(
        "onnxruntime", description="compare: runtime that measures latency (ONNX export for onnxruntime / openvino)")
    max_latency_ms: float | None = Field(None, gt=0, description="compare: latency budget (p50 ms) for the recommendation")
    train_batch: int | None = Field(None, ge=1, description="compare: training batch of every model (default: train's default)")
    latency_iters: int = Field(50, ge=1, description="compare: timed calls per model, interleaved over up to 5 rounds")

    # logging
    logger: list[str] = Field(default_factory=lambda: ["tensorboard"])
    plots: bool = True
    verbose: bool = True

    @field_validator("model", "data", "pretrained", "project", "name", "device", "source", "save_dir",
                     "gt", "pred", "backend", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        # name=2024 or source=0 arrive as numbers from YAML parsing: they are names here
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("anchors", mode="before")
    @classmethod
    def _anchors(cls, v: Any) -> Any:
        # "10,13, 16,30" or [[10, 13], [16, 30]] -> [10.0, 13.0, 16.0, 30.0]
        if isinstance(v, str) and v.strip().lower() in ("default", "auto"):
            return v.strip().lower()
        items = v.replace("[", " ").replace("]", " ").replace(",", " ").split() if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)):
            raise ValueError("anchors must be default, auto or a list w1,h1,w2,h2,... of pixel sizes")
        flat = [x for item in items for x in (item if isinstance(item, (list, tuple)) else [item])]
        try:
            flat = [float(x) for x in flat]
        except (TypeError, ValueError):
            raise ValueError(f"anchors: {v!r} is not default, auto or a list of numbers") from None
        if not flat or len(flat) % 2 or min(flat) <= 0:
            raise ValueError(f"anchors: need an even count of positive w,h pixel sizes, got {len(flat)} values")
        return flat

    @field_validator("ema_warmup", mode="before")
    @classmethod
    def _ema_warmup(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            steps = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"ema_warmup must be auto or a number of steps >= 0, got {v!r}") from None
        if steps < 0 or steps != float(v):
            raise ValueError(f"ema_warmup must be auto or a whole number of steps >= 0, got {v!r}")
        return steps

    @field_validator("batch")
    @classmethod
    def _batch(cls, v: float) -> float:
        if v == -1 or 0 < v < 1 or (v >= 1 and float(v).is_integer()):
            return v
        raise ValueError("batch must be a positive integer, -1 (auto) or a fraction in (0, 1)")

    @field_validator("logger", mode="before")
    @classmethod
    def _logger(cls, v: Any) -> list[str]:
        if v is None or v is False or v == "none":
            return []
        items = [v] if isinstance(v, str) else list(v)
        allowed = {"tensorboard", "wandb", "clearml", "mlflow"}
        for item in items:
            if item not in allowed:
                raise ValueError(f"unknown logger {item!r}; allowed: {sorted(allowed)}")
        return items

    @field_validator("cache", mode="before")
    @classmethod
    def _cache(cls, v: Any) -> str:
        if v is False or v is None:
            return "false"
        if v is True:
            return "ram"
        return str(v).lower()


# what each key means, for the keys whose Field above carries no description; `detforge help
# keys` shows these, and a test checks that every key has one
KEY_HELP: dict[str, str] = {
    "project": "folder that holds the run folders",
    "name": "run folder name inside project (default: the command's name; a number is appended if taken)",
    "exist_ok": "reuse an existing run folder instead of appending a number",
    "resume": "true: continue the newest weights/last.pt under project; or a path to a last.pt",
    "ignore_background_epochs": "leave images without boxes out of the first N epochs",
    "workers": "data-loading processes per device (0: load in the main process)",
    "cache": "false | ram | disk: keep decoded images (resized to imgsz) to skip JPEG decoding after the first epoch",
    "resize_mode": "stretch (plain resize to imgsz x imgsz) or letterbox (aspect kept, padded)",
    "epochs": "training epochs",
    "optimizer": "auto (family default, else SGD for long runs / AdamW for short), or one by name",
    "momentum": "SGD momentum / Adam beta1",
    "beta2": "Adam / AdamW / NAdam / RAdam / LAMB second-moment decay: how many steps the gradient scale is averaged over (~1 / (1 - beta2))",
    "weight_decay": "decoupled (AdamW/LAMB) or L2 (SGD) weight decay; none on norms and biases (default: optimizer's)",
    "scheduler": "lr schedule after warm-up",
    "warmup_epochs": "linear lr warm-up length in epochs",
    "warmup_bias_lr": "start lr of biases during warm-up (YOLO style); 0 = same ramp as other weights",
    "step_milestones": "scheduler=step: fractions of the run at which the lr is multiplied by step_gamma",
    "step_gamma": "scheduler=step: lr factor at each milestone",
    "sgdr_mult": "sgdr: each cycle is this many times longer than the previous one",
    "sgdr_decay": "sgdr: each restart peaks at this fraction of the previous peak",
    "lr_scale": "scale lr0 with the global batch: linear (Goyal et al.) or sqrt, from nominal_batch",
    "nominal_batch": "batch at which lr0 holds (lr_scale), and the batch weight decay is sized for",
    "lars_trust_coef": "LARS trust coefficient (eta) of the local lr",
    "ema": "keep an exponential moving average of the weights; it is what validation and best.pt use",
    "ema_decay": "EMA decay once ramped up",
    "amp": "mixed precision on CUDA (ignored on CPU)",
    "amp_dtype": "float16 (with loss scaling) or bfloat16",
    "accumulate": "optimizer step every N batches (effective batch = batch x accumulate)",
    "save_period": "also keep weights/epochN.pt every N epochs; 0 off",
    "val_period": "validate every N epochs (the last epoch always)",
    "seed": "seed of every random choice (data order, augmentation, init)",
    "deterministic": "use deterministic kernels (slower; bit-identical reruns on the same machine)",
    "recipe": "a published training recipe on top of the family defaults: default (none) or cooldet (seed 004: LARS, warm-up, cosine, SyncBN)",
    "parallel": "multi-process training: ddp, zero1 (sharded optimizer) or fsdp (FSDP2)",
    "sync_bn": "synchronise BatchNorm statistics across processes",
    "mosaic": "probability of a 4-image mosaic per training sample",
    "close_mosaic": "switch mosaic, mixup and copy-blend off for the last N epochs (D-FINE: 15% of the epochs; a quarter from scratch on small sparse objects)",
    "mosaic_zoom": "mosaic canvas scale: 1 = tiles at training scale, cropped (YOLO); 0.5 = four whole images at half scale (DEIM)",
    "open_mosaic": "switch mosaic, mixup and copy-blend on only after the first N epochs (DEIM's plain first stage); 0: from the start",
    "mixup": "probability of MixUp per training sample",
    "mixup_mode": "overlay (blend with a constant weight) or geometry (Zhang et al. 2019: Beta(1.5,1.5) blend, per-box weights)",
    "cutout": "probability of cutting random holes (boxes mostly hidden are dropped)",
    "degrees": "random rotation range (+/- degrees)",
    "translate": "random translation (+/- fraction of the size)",
    "scale": "random scale gain (1 +/- scale)",
    "shear": "random shear range (+/- degrees)",
    "hsv_h": "hue jitter (fraction of the hue circle)",
    "hsv_s": "saturation jitter (fraction)",
    "hsv_v": "value (brightness) jitter (fraction)",
    "brightness": "probability of a random brightness/contrast change",
    "gamma": "probability of a random gamma change",
    "blur": "probability of a Gaussian blur",
    "noise": "probability of Gaussian noise",
    "to_gray": "probability of converting to grayscale",
    "fliplr": "probability of a horizontal flip",
    "flipud": "probability of a vertical flip",
    "rot90": "probability of a random 90-degree rotation",
    "label_smoothing": "class-target smoothing (0 off)",
    "max_det": "most detections kept per image",
    "fitness": "what picks best.pt: mean of mAP50 and F1 (map50_f1), or one metric",
    "split": "dataset split to score / predict on",
    "save": "write images with the predictions drawn",
    "save_txt": "write YOLO-format txt predictions (one file per image)",
    "save_json": "write COCO-format results (predictions.json; dataset image and category ids when the source is a dataset; val: every detection its mAP ranked)",
    "save_dir": "write the outputs here instead of a numbered run folder",
    "cut_padding": "letterbox models: pad only to the next stride multiple instead of the full square",
    "format": "export format",
    "dynamic": "export with dynamic batch and image size",
    "half": "export / run in float16 (GPU backends)",
    "opset": "ONNX opset version",
    "gt": "eval: COCO annotations json",
    "pred": "eval: COCO results json (detections)",
    "backend": "predict from a .pt with another runtime: torch, onnxruntime, openvino, tensorrt",
    "threads": "CPU threads of the inference runtime",
    "logger": "experiment trackers: tensorboard, wandb, clearml, mlflow (a list, or none)",
    "plots": "write plots to the run folder",
    "verbose": "progress bars and per-epoch lines",
}
for _key, _text in KEY_HELP.items():
    if _key in TrainConfig.model_fields and not TrainConfig.model_fields[_key].description:
        TrainConfig.model_fields[_key].description = _text

FIELDS = list(TrainConfig.model_fields)
# keys only DETR families read (their help says so): other families would ignore them silently
DETR_KEYS = [k for k, f in TrainConfig.model_fields.items() if (f.description or "").startswith("DETRs")]


def detr_keys_set(cfg: BaseModel) -> list[str]:
    """The DETR-only keys of ``cfg`` that differ from their defaults."""
    return [k for k in DETR_KEYS if getattr(cfg, k) != TrainConfig.model_fields[k].default]


def closest_key(key: str, keys: list[str] | None = None) -> str | None:
    match = difflib.get_close_matches(key, keys or FIELDS, n=1, cutoff=0.5)
    return match[0] if match else None


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            hint = closest_key(key)
            lines.append(f"unknown key '{key}'" + (f"; did you mean '{hint}'?" if hint else ""))
            continue
        msg = e["msg"]
        allowed = (e.get("ctx") or {}).get("expected")
        if allowed:
            msg = f"allowed values: {allowed}"
        lines.append(f"bad value {e.get('input')!r} for '{key}': {msg}")
    return "; ".join(lines)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["epochs=3", "device=cpu"]`` -> typed dict (YAML scalars: 3 -> int, true -> bool)."""
    out: dict[str, Any] = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument '{arg}' is not key=value (e.g. epochs=10)")
        key, value = arg.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(f"argument '{arg}' has an empty key")
        try:
            parsed = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, dict) or not isinstance(parsed, (str, int, float, bool, list, type(None))):
            parsed = value  # "a: b" or a date: keep the text as typed
        elif isinstance(parsed, str):
            try:  # YAML 1.1 reads 1e-3 as a string
                parsed = float(parsed) if any(c.isdigit() for c in parsed) and "," not in parsed else parsed
            except ValueError:
                pass
        out[key] = parsed
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cfg file not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def build_config(
    overrides: dict[str, Any] | None = None,
    preset: dict[str, Any] | None = None,
    cfg_file: str | Path | None = None,
    model_cls: type[BaseModel] = TrainConfig,
) -> Any:
    """Merge defaults < preset < YAML file < overrides and validate."""
    layers = [OmegaConf.create(preset or {})]
    if cfg_file:
        layers.append(OmegaConf.create(load_yaml(cfg_file)))
    layers.append(OmegaConf.create({k: v for k, v in (overrides or {}).items()}))
    merged = OmegaConf.to_container(OmegaConf.merge(*layers), resolve=True)
    if "device" in merged and merged["device"] is not None:
        merged["device"] = str(merged["device"])
    try:
        return model_cls(**merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def config_to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def action_options(command: str, args: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Keys of the sub-commands (``bench latency``, ``data convert``, ...) that have their own
    small key sets: ``defaults`` overlaid with ``args``, validated by pydantic like every other
    command's keys (each value takes its default's type; an unknown key is refused with the
    closest one). ``help`` among the keys (``--help`` on the command line) lists them instead."""
    if "help" in args and "help" not in defaults:
        width = max(len(k) for k in defaults)
        raise KeysRequested("\n".join([f"usage: detforge {command} key=value ...; keys and defaults:"]
                                      + [f"  {k:{width}s}  {v!r}" for k, v in sorted(defaults.items())]))
    unknown = [k for k in args if k not in defaults]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(defaults), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{command}: unknown key '{key}'{hint} Allowed: {', '.join(sorted(defaults))}")
    # a text key given a bool or number (fake_data=false, batch=2) keeps it as text
    args = {k: (str(v).lower() if isinstance(v, bool) else v) if isinstance(defaults[k], str) else v
            for k, v in args.items()}
    fields = {k: (_field_type(v), v) for k, v in defaults.items()}
    schema = create_model("ActionOptions", __config__=ConfigDict(coerce_numbers_to_str=True), **fields)
    try:
        return schema(**{**defaults, **args}).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        expected = {int: "an integer", float: "a number", bool: "true or false"}.get(_field_type(defaults[key]), "text")
        raise ConfigError(f"{command}: bad value {first.get('input')!r} for '{key}': expected {expected}") from None


def _field_type(default: Any) -> Any:
    if default is None:
        return Any
    return type(default)
