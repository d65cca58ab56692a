"""`detforge predict model=FILE source=IMAGE|DIR|VIDEO|GLOB [conf=] [imgsz=] [save=] [save_txt=] [save_json=]`.

Writes into runs/predict/NAME/: drawn images (videos as .mp4), ``labels/STEM.txt`` (YOLO:
``class cx cy w h conf`` normalised to the image), ``predictions.json`` (COCO results).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from detforge.config import ConfigError, TrainConfig
from detforge.infer.draw import draw_detections
from detforge.infer.predictor import Predictor
from detforge.infer.sources import Frame, count_frames, expand_paths, iter_frames
from detforge.records import Detections
from detforge.utils.runtime import increment_path

LOG = logging.getLogger("detforge")


def yolo_lines(dets: Detections, width: int, height: int) -> list[str]:
    lines = []
    for (x1, y1, x2, y2), score, label in zip(dets.boxes, dets.scores, dets.labels):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {float(score):.5f}")
    return lines


def coco_results(dets: Detections, image_id, names: list[str]) -> list[dict]:
    """COCO results entries; ``category_id`` is the 0-based class index (``category_name`` beside it)."""
    out = []
    for (x1, y1, x2, y2), score, label in zip(dets.boxes, dets.scores, dets.labels):
        out.append({
            "image_id": image_id, "category_id": int(label), "category_name": names[int(label)],
            "bbox": [round(float(x1), 3), round(float(y1), 3), round(float(x2 - x1), 3), round(float(y2 - y1), 3)],
            "score": round(float(score), 5),
        })
    return out


class ResultWriter:
    """Everything predict saves, one frame at a time."""

    def __init__(self, save_dir: Path, names: list[str], save: bool, save_txt: bool, save_json: bool) -> None:
        self.save_dir, self.names = save_dir, names
        self.save, self.save_txt, self.save_json = save, save_txt, save_json
        self.json_rows: list[dict] = []
        self.videos: dict[Path, cv2.VideoWriter] = {}
        self.used: dict[str, set[str]] = {"labels": set(), "files": set()}
        if save_txt:
            (save_dir / "labels").mkdir(parents=True, exist_ok=True)

    def _unique(self, name: str, kind: str = "files") -> str:
        """``name``, or ``stem_2.ext`` ... when two source folders hold the same file name."""
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 2
        while candidate in self.used[kind]:
            candidate, n = f"{stem}_{n}{suffix}", n + 1
        self.used[kind].add(candidate)
        return candidate

    def add(self, frame: Frame, dets: Detections) -> None:
        h, w = frame.image.shape[:2]
        if self.save_txt:
            (self.save_dir / "labels" / self._unique(f"{frame.stem}.txt", "labels")).write_text("".join(f"{ln}\n" for ln in yolo_lines(dets, w, h)))
        if self.save_json:
            image_id = int(frame.stem) if frame.stem.isdigit() else frame.stem
            self.json_rows.extend(coco_results(dets, image_id, self.names))
        if self.save:
            drawn = cv2.cvtColor(draw_detections(frame.image, dets, self.names), cv2.COLOR_RGB2BGR)
            if frame.is_video:
                self._video(frame, w, h).write(drawn)
            else:
                suffix = frame.path.suffix.lower() if frame.path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
                target = self.save_dir / self._unique(frame.path.stem + suffix)
                if not cv2.imwrite(str(target), drawn):
                    raise OSError(f"{target}: could not write the image")

    def _video(self, frame: Frame, w: int, h: int) -> cv2.VideoWriter:
        if frame.path not in self.videos:
            target = self.save_dir / self._unique(frame.path.stem + ".mp4")
            writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps or 25.0, (w, h))
            if not writer.isOpened():
                raise OSError(f"{target}: OpenCV cannot open a video writer (mp4v)")
            self.videos[frame.path] = writer
        return self.videos[frame.path]

    def close(self) -> None:
        for writer in self.videos.values():
            writer.release()
        if self.save_json:
            (self.save_dir / "predictions.json").write_text(json.dumps(self.json_rows))


def predict_command(cfg: TrainConfig, given: set[str]) -> int:
    if not cfg.source:
        raise ConfigError("predict needs source=IMAGE|DIR|VIDEO|GLOB")
    if "model" not in given:
        raise ConfigError("predict needs model=FILE (.pt, .onnx, OpenVINO .xml or TensorRT .engine)")
    paths = expand_paths(cfg.source)
    predictor = Predictor(
        cfg.model, conf=cfg.conf if "conf" in given else None, imgsz=cfg.imgsz if "imgsz" in given else None,
        device=cfg.device, backend=cfg.backend, cut_padding=cfg.cut_padding, threads=cfg.threads,
        batch=int(cfg.batch) if "batch" in given and cfg.batch >= 1 else 8, decoder_layers=cfg.decoder_layers,
    )
    save_dir = Path(cfg.save_dir) if cfg.save_dir else increment_path(Path(cfg.project) / "predict" / (cfg.name or "predict"), cfg.exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    writer = ResultWriter(save_dir, predictor.names, cfg.save, cfg.save_txt, cfg.save_json)
    failed: list[Frame] = []
    frames = detections = 0
    start = time.perf_counter()
    pending: list[Frame] = []

    def flush() -> None:
        nonlocal frames, detections
        results = predictor.predict_arrays([f.image for f in pending])
        for frame, dets in zip(pending, results):
            writer.add(frame, dets)
            frames, detections = frames + 1, detections + len(dets)
        pending.clear()

    try:
        with tqdm(total=count_frames(paths), unit="img", desc="predict", disable=not cfg.verbose) as bar:
            for frame in iter_frames(paths):
                if frame.image is None:
                    failed.append(frame)
                    LOG.warning("skipped %s: %s", frame.path, frame.error)
                else:
                    pending.append(frame)
                if len(pending) >= predictor.batch:
                    flush()
                bar.update(1)
            if pending:
                flush()
    finally:
        writer.close()
    elapsed = time.perf_counter() - start
    LOG.info("%d images/frames, %d detections, %.1f ms per image (read + infer + save), %s backend -> %s",
             frames, detections, 1000 * elapsed / max(frames, 1), predictor.backend.name, save_dir)
    if failed:
        LOG.warning("%d inputs could not be read: %s", len(failed), ", ".join(str(f.path) for f in failed[:10]))
    return 1 if failed and not frames else 0
