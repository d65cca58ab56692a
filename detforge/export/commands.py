"""`detforge export model=best.pt format=onnx|openvino|tensorrt [imgsz=] [dynamic=] [half=] [batch=]`."""

from __future__ import annotations

import logging
from pathlib import Path

from detforge.config import ConfigError, TrainConfig

LOG = logging.getLogger("detforge")


def export_command(cfg: TrainConfig, given: set[str]) -> int:
    from detforge.engine.checkpoint import load_detector_checkpoint
    from detforge.export import export_model
    from detforge.export.metadata import checkpoint_conf

    source = Path(cfg.model)
    if source.suffix != ".pt":
        raise ConfigError(f"export needs model=PATH/TO/best.pt (a trained checkpoint), got '{cfg.model}'")
    if not source.is_file():
        raise FileNotFoundError(f"{source}: checkpoint not found")
    model, ckpt = load_detector_checkpoint(source, decoder_layers=cfg.decoder_layers)
    saved = ckpt.get("config") or {}
    names = list(ckpt.get("names") or [str(i) for i in range(model.num_classes)])
    imgsz = cfg.imgsz if "imgsz" in given else int(ckpt.get("imgsz", saved.get("imgsz", cfg.imgsz)))
    resize_mode = cfg.resize_mode if "resize_mode" in given else ckpt.get("resize_mode", saved.get("resize_mode", "stretch"))
    conf = cfg.conf if "conf" in given else checkpoint_conf(ckpt)
    batch = int(cfg.batch) if "batch" in given and cfg.batch >= 1 else 1
    out = Path(cfg.save_dir) / source.stem if cfg.save_dir else source.with_suffix("")
    path = export_model(
        model, names, cfg.format, out, imgsz=imgsz, resize_mode=resize_mode, dynamic=cfg.dynamic,
        half=cfg.half, batch=batch, opset=cfg.opset, conf=0.25 if conf is None else conf, max_det=cfg.max_det,
    )
    print(f"exported {source} -> {path}")
    return 0
