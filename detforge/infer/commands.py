"""`detforge predict model=FILE source=IMAGE|DIR|VIDEO|GLOB [conf=] [imgsz=] [save=] [save_txt=] [save_json=]`.

Writes into runs/predict/NAME/: drawn images (videos as .mp4), ``labels/STEM.txt`` (YOLO:
``class cx cy w h conf`` normalised to the image), ``predictions.json`` (COCO results). A mask
model's detections also carry their masks: drawn filled, written as YOLO-seg lines
(``class x1 y1 ... conf``) and as COCO RLE ``segmentation``.

When the source is a dataset (``source=`` a dataset folder or data.yaml, or ``data=`` without
``source=``), predict runs on its ``split=`` and ``predictions.json`` uses the dataset's own
image and category ids (a COCO file's, else 1..N and 1..K as ``detforge data convert to=coco``
writes them); ``save_gt=true`` writes the matching ground truth as ``gt.json`` beside it, so
``detforge eval gt=gt.json pred=predictions.json`` scores exactly what ``detforge val`` scores
(with ``conf=0``: val ranks every detection up to ``max_det``). Otherwise ``image_id`` is the
file stem and ``category_id`` the 0-based class index.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from detforge.config import ConfigError, TrainConfig
from detforge.data.polygons import box_ring, join_outline, mask_to_rings
from detforge.eval.coco import encode_masks
from detforge.infer.draw import draw_detections
from detforge.infer.predictor import Predictor
from detforge.infer.sources import Frame, count_frames, expand_paths, iter_frames
from detforge.records import DetectionData, Detections, Sample
from detforge.utils.runtime import increment_path

LOG = logging.getLogger("detforge")


def yolo_lines(dets: Detections, width: int, height: int) -> list[str]:
    """``class cx cy w h conf`` per detection; with masks YOLO-seg ``class x1 y1 ... conf`` (the
    mask traced into one ring, holes and parts joined by zero-width cuts; an empty mask: its box)."""
    lines = []
    for k, ((x1, y1, x2, y2), score, label) in enumerate(zip(dets.boxes, dets.scores, dets.labels)):
        if dets.masks is not None:
            ring = join_outline(mask_to_rings(dets.masks[k])) if dets.masks[k].any() else box_ring((x1, y1, x2, y2))
            xy = " ".join(f"{v:.6f}" for v in (ring / [width, height]).reshape(-1))
            lines.append(f"{int(label)} {xy} {float(score):.5f}")
            continue
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {float(score):.5f}")
    return lines


def coco_results(dets: Detections, image_id, names: list[str], category_ids: list[int] | None = None,
                 rles: list[dict] | None = None) -> list[dict]:
    """COCO results entries (``category_name`` beside each). ``category_id`` is
    ``category_ids[class]``, or the 0-based class index without them. Values are not rounded:
    xywh is the exact float64 difference of the float32 box, so a reader gets the box back.
    Detections with masks also get ``segmentation`` as COCO RLE (what ``detforge eval`` and
    pycocotools read for the mask mAP): ``rles`` when the caller already encoded them, else
    encoded from ``dets.masks``."""
    out = []
    for (x1, y1, x2, y2), score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
        out.append({
            "image_id": image_id, "category_id": int(category_ids[label]) if category_ids else int(label),
            "category_name": names[int(label)], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
        })
    if rles is None and dets.masks is not None:
        rles = encode_masks(dets.masks)
    for entry, rle in zip(out, rles or []):
        entry["segmentation"] = rle
    return out


class ResultWriter:
    """Everything predict saves, one frame at a time."""

    def __init__(self, save_dir: Path, names: list[str], save: bool, save_txt: bool, save_json: bool,
                 image_ids: dict[str, object] | None = None, category_ids: list[int] | None = None) -> None:
        self.save_dir, self.names = save_dir, names
        self.save, self.save_txt, self.save_json = save, save_txt, save_json
        self.image_ids, self.category_ids = image_ids, category_ids  # a dataset's ids (None: file stems)
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
            if self.image_ids is not None:
                image_id = self.image_ids[str(frame.path)]
            else:
                image_id = int(frame.stem) if frame.stem.isdigit() else frame.stem
            self.json_rows.extend(coco_results(dets, image_id, self.names, self.category_ids))
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


def dataset_source(cfg: TrainConfig, given: set[str]) -> tuple[DetectionData, list[Sample]] | None:
    """The dataset and split predict runs on: ``source=`` a dataset folder or data.yaml, or
    ``data=`` without ``source=``; None when the source is plain images or video."""
    from detforge.data.formats import DatasetError, detect_layout, load_dataset

    where = None
    if cfg.source:
        path = Path(cfg.source).expanduser()
        if path.is_dir() or path.suffix.lower() in (".yaml", ".yml"):
            try:
                detect_layout(path)
                where = path
            except DatasetError:
                where = None  # a folder of images, not a dataset
        if "data" in given and (where is None or Path(cfg.data or "").expanduser().resolve() != path.resolve()):
            raise ConfigError(f"predict: data={cfg.data} names the dataset to predict on; source={cfg.source} is "
                              f"{'another dataset' if where is not None else 'not that dataset'}: give one of them")
    elif "data" in given:
        where = cfg.data
    if where is None:
        return None
    data = load_dataset(where)
    samples = data.splits.get(cfg.split) or []
    if not samples:
        raise ConfigError(f"predict: {data.root} has no images in split '{cfg.split}' "
                          f"(splits: {', '.join(k for k, v in data.splits.items() if v) or 'none'}); pass split=")
    return data, samples


def predict_command(cfg: TrainConfig, given: set[str]) -> int:
    if "model" not in given:
        raise ConfigError("predict needs model=FILE (.pt, .onnx, OpenVINO .xml or TensorRT .engine)")
    dataset = dataset_source(cfg, given)
    if dataset is None and not cfg.source:
        raise ConfigError("predict needs source=IMAGE|DIR|VIDEO|GLOB, or a dataset (source=DATASET or data=DATASET)")
    if cfg.save_gt and dataset is None:
        raise ConfigError(f"predict: save_gt=true writes a dataset's ground truth, but source={cfg.source} is not "
                          "a dataset folder or data.yaml (pass one, or data= with split=)")
    image_ids = category_ids = None
    if dataset is not None:
        from detforge.data.formats.coco import coco_ids

        data, samples = dataset
        paths = [s.image_path for s in samples]
        ids, category_ids = coco_ids(data, samples)
        image_ids = {str(s.image_path): i for s, i in zip(samples, ids)}
        LOG.info("predict: %s is a %s dataset; running on its '%s' split (%d images), results in its image and "
                 "category ids", data.root, data.layout, cfg.split, len(samples))
    else:
        paths = expand_paths(cfg.source)
    predictor = Predictor(
        cfg.model, conf=cfg.conf if "conf" in given else None, imgsz=cfg.imgsz if "imgsz" in given else None,
        device=cfg.device, backend=cfg.backend, cut_padding=cfg.cut_padding, threads=cfg.threads,
        batch=int(cfg.batch) if "batch" in given and cfg.batch >= 1 else 8, decoder_layers=cfg.decoder_layers,
        max_det=cfg.max_det if "max_det" in given else None,
    )
    if dataset is not None and predictor.names != list(dataset[0].names):
        raise ConfigError(f"predict: the model's classes {predictor.names} are not the dataset's {dataset[0].names}")
    if dataset is not None and cfg.save_json and "conf" not in given:
        LOG.info("predict: predictions.json keeps detections above the model's thresholds; for the COCO mAP that "
                 "`detforge val` reports, pass conf=0 (val ranks every detection up to max_det)")
    save_dir = Path(cfg.save_dir) if cfg.save_dir else increment_path(Path(cfg.project) / (cfg.name or "predict"), cfg.exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    writer = ResultWriter(save_dir, predictor.names, cfg.save, cfg.save_txt, cfg.save_json, image_ids, category_ids)
    if dataset is not None and cfg.save_gt:
        from detforge.data.formats.coco import coco_ground_truth

        gt = coco_ground_truth(samples, data.names, ids, category_ids)
        (save_dir / "gt.json").write_text(json.dumps(gt))
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
