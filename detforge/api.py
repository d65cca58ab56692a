"""The Python API; the command line is a thin layer over it.

    from detforge import Detector
    det = Detector("dfine-n", num_classes=3)          # a fresh model
    det.train(data="path/to/data", epochs=50)          # -> metrics of the best epoch
    det = Detector("runs/train/weights/best.pt")       # a trained checkpoint
    det.val(data="path/to/data")                       # -> metrics
    det.predict("image.jpg", conf=0.5)                 # -> [Detections]
    det.export(format="onnx")                          # -> path of the written file
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from detforge.config import TrainConfig
from detforge.engine.checkpoint import build_with_weights, load_detector_checkpoint, set_decoder_layers
from detforge.utils.runtime import increment_path, select_device, setup_logging

LOG = logging.getLogger("detforge")


class Detector:
    def __init__(
        self,
        model: str = "dfine-n",
        num_classes: int | None = None,
        pretrained: str | None = None,
        names: list[str] | None = None,
        decoder_layers: int | None = None,
    ) -> None:
        """``decoder_layers``: DETRs predict from their first N decoder layers (see
        DFine.set_decoder_layers); val, predict and export then use that form."""
        setup_logging()
        self.source = str(model)
        self.pretrained = pretrained
        self.ckpt: dict[str, Any] | None = None
        if self.source.endswith(".pt"):
            self.model, self.ckpt = load_detector_checkpoint(self.source, decoder_layers=decoder_layers)
            self.names = list(self.ckpt.get("names") or [str(i) for i in range(self.model.num_classes)])
            if num_classes and num_classes != self.model.num_classes:
                raise ValueError(f"{model} was trained for {self.model.num_classes} classes, not {num_classes}")
        else:
            from detforge.hub import resolve_pretrained

            self.pretrained = pretrained = resolve_pretrained(self.source, pretrained)  # a published name -> its file
            k = num_classes or (len(names) if names else 80)
            self.model = build_with_weights(self.source, k, pretrained)
            self.names = list(names) if names else [str(i) for i in range(k)]
            self.pretrained_report = getattr(self.model, "load_report", None)
            set_decoder_layers(self.model, decoder_layers)
        self.num_classes = self.model.num_classes

    # ---------------------------------------------------------------- training
    def train(self, **overrides: Any) -> dict[str, Any]:
        from detforge.engine.trainer import Trainer

        cfg_file = overrides.pop("cfg", None)
        args = {"model": self.source}
        if self.pretrained:
            args["pretrained"] = self.pretrained
        args.update(overrides)
        if cfg_file:
            args["cfg"] = cfg_file
        from detforge.engine.resolve import resolve_train_config

        trainer = Trainer(resolve_train_config(args))  # pretrained=NAME is fetched there
        metrics = trainer.train()
        best = Path(metrics["save_dir"]) / "weights" / "best.pt"
        if best.is_file():
            self.__init__(str(best))
        return metrics

    # ---------------------------------------------------------------- evaluation
    def _settings(self) -> dict[str, Any]:
        saved = (self.ckpt or {}).get("config") or {}
        return {k: saved[k] for k in ("imgsz", "resize_mode", "conf", "iou_thr", "data") if k in saved}

    def val(self, **overrides: Any) -> dict[str, Any]:
        from detforge.data.dataset import DetectionDataset
        from detforge.data.formats import load_dataset
        from detforge.data.loader import build_dataloader
        from detforge.engine.validator import evaluate

        from detforge.engine.resolve import command_config

        cfg = command_config("val", {"model": self.source, **overrides}, base=self._settings())
        device = select_device(cfg.device)
        data = load_dataset(cfg.data)
        samples = data.splits.get(cfg.split) or []
        if not samples:
            raise ValueError(f"{data.root}: split '{cfg.split}' has no images (splits: {sorted(data.splits)})")
        if len(data.names) != self.num_classes:
            raise ValueError(f"the model has {self.num_classes} classes but {data.root} names {len(data.names)}")
        dataset = DetectionDataset(samples, cfg, train=False)
        loader = build_dataloader(dataset, max(1, int(cfg.batch if cfg.batch >= 1 else 16)), train=False,
                                  workers=cfg.workers, seed=cfg.seed)
        self.model.to(device)
        amp = None
        if cfg.amp and device.type == "cuda":
            amp = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        metrics, evaluator, predictions = evaluate(self.model, loader, self.names, cfg.conf, cfg.iou_thr, device, amp,
                                                   cfg.max_det)
        from detforge.eval.evaluator import fitness

        metrics["fitness"] = fitness(metrics, cfg.fitness)
        save_dir = Path(cfg.save_dir) if cfg.save_dir else increment_path(Path(cfg.project) / (cfg.name or "val"),
                                                                            cfg.exist_ok)
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        if cfg.plots:
            evaluator.save_plots(save_dir)
        if cfg.save_json:
            self._save_predictions(save_dir / "predictions.json", data, samples, predictions)
        LOG.info(
            "val %s on %s/%s (%d images): mAP50-95 %.4f  mAP50 %.4f  P %.3f  R %.3f  F1 %.3f  IoU %.3f -> %s",
            self.source, data.root, cfg.split, len(samples), metrics["map50_95"], metrics["map50"],
            metrics["precision"], metrics["recall"], metrics["f1"], metrics["iou"], save_dir,
        )
        if "segm_map50_95" in metrics:  # a mask model on data with outlines
            LOG.info("val masks: mAP50-95 %.4f  mAP50 %.4f  mAP75 %.4f", metrics["segm_map50_95"],
                     metrics["segm_map50"], metrics["segm_map75"])
        metrics["save_dir"] = str(save_dir)
        return metrics

    def _save_predictions(self, path: Path, data, samples, predictions: dict) -> None:
        """Every scored detection (conf floor 0, up to max_det per image: what the mAP ranked) as
        COCO results in the dataset's image and category ids (`detforge eval` reads them)."""
        from detforge.data.formats.coco import coco_ids
        from detforge.infer.commands import coco_results

        image_ids, category_ids = coco_ids(data, samples)
        rows = []
        for idx in sorted(predictions):
            det, rles = predictions[idx]
            rows.extend(coco_results(det, image_ids[idx], self.names, category_ids, rles=rles))
        path.write_text(json.dumps(rows))
        LOG.info("val: %d detections on %d images -> %s", len(rows), len(predictions), path)

    # ---------------------------------------------------------------- deployment
    def predictor(self, conf: float | list[float] | None = None, imgsz: int | None = None, device: str = "auto"):
        """``conf=None``: the thresholds chosen at the end of training (per class), else 0.25."""
        from detforge.infer.predictor import Predictor

        s = self._settings()
        if conf is None and self.ckpt is not None:
            from detforge.export.metadata import checkpoint_conf

            conf = checkpoint_conf(self.ckpt)
        conf = 0.25 if conf is None else conf
        return Predictor.from_model(
            self.model, self.names, imgsz=imgsz or s.get("imgsz", 640),
            resize_mode=s.get("resize_mode", "stretch"), conf=conf, device=device,
        )

    def predict(self, source, conf: float | list[float] | None = None, imgsz: int | None = None):
        return self.predictor(conf=conf, imgsz=imgsz).predict(source)

    def export(self, format: str = "onnx", **kw: Any) -> Path:
        from detforge.export import export_model

        s = self._settings()
        kw.setdefault("imgsz", s.get("imgsz", 640))
        kw.setdefault("resize_mode", s.get("resize_mode", "stretch"))
        if self.ckpt is not None:
            from detforge.export.metadata import checkpoint_conf

            stored = checkpoint_conf(self.ckpt)
            if stored is not None:
                kw.setdefault("conf", stored)
        out = kw.pop("out", None) or (Path(self.source).with_suffix("") if self.source.endswith(".pt") else Path(self.source))
        return export_model(self.model, self.names, format=format, out=out, **kw)


__all__ = ["Detector", "TrainConfig", "load_detector_checkpoint"]
