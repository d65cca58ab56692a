"""Output parity of detforge's YOLOv3 with OpenCV 4's Darknet reader (an independent
implementation of Darknet's cfg + weights semantics).

    python benchmarks/yolov3_darknet_parity.py [--sizes yolov3-tiny,yolov3] [--images 4]
        [--opencv-python /work/venvs/opencv4/bin/python] [--data /path/to/bccd]

For each size: detforge's model (80 classes) gets random weights (every conv and BatchNorm
affine term random; the BatchNorm statistics then set from the images themselves, so
activations stay in a realistic range through 75 layers), is written as a Darknet ``.cfg``
(generated from the model's own layout, ``darknet_layout().to_cfg``) and ``.weights``
(``save_darknet_weights``); a fresh detforge model reads the ``.weights`` back
(``load_darknet_weights``) and OpenCV reads both. Both run the same 416x416 RGB 0..1 tensors
made from real BCCD images (random images when the dataset is absent), and the script compares
the raw output conv maps (what the [yolo] layers decode), and the decoded [yolo] outputs (box
centre and size as fractions of the input, objectness, objectness x class scores).

End to end, float32 rounding adds up over 75 layers; so the script also checks every conv layer
alone: OpenCV saves every section's output, each detforge conv layer runs on the output OpenCV
gave for the section before it, and the two results of that one layer are compared (and both
against the same layer in float64). A wrong padding, BatchNorm epsilon or leaky slope shows
there at once, in the layer that has it, without rounding from the layers before.

OpenCV 5 dropped the Darknet reader and detforge's environment holds OpenCV 5, so OpenCV 4 runs
in a separate environment (numpy + ``opencv-python-headless<5``) through
``opencv_darknet_forward.py``; the two sides exchange .npy files only. Exits non-zero when a
single layer or the whole network's raw maps differ by more than --tol (default 1e-4).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detforge.models.yolov3.darknet_weights import load_darknet_weights, save_darknet_weights  # noqa: E402
from detforge.models.yolov3.decode import decode_boxes, split_level  # noqa: E402
from detforge.models.yolov3.model import YOLOv3  # noqa: E402

IMGSZ = 416


def load_images(data: Path, count: int, seed: int) -> tuple[np.ndarray, str]:
    """[N, 3, 416, 416] float32 RGB 0..1 (stretched, as detforge's default resize)."""
    files = sorted((data / "JPEGImages").glob("*.jpg")) if data.is_dir() else []
    if not files:
        rng = np.random.default_rng(seed)
        return rng.random((count, 3, IMGSZ, IMGSZ), dtype=np.float32), "random images (no BCCD found)"
    picks = [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]
    arrays = []
    for f in picks:
        bgr = cv2.resize(cv2.imread(str(f)), (IMGSZ, IMGSZ), interpolation=cv2.INTER_LINEAR)
        arrays.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.stack(arrays), f"BCCD {', '.join(p.stem for p in picks)}"


@torch.no_grad()
def randomise(model: YOLOv3, images: torch.Tensor, seed: int) -> None:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_uniform_(m.weight, a=0.1)
            if m.bias is not None:
                m.bias.uniform_(-0.5, 0.5)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.3, 0.3)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for i in range(0, len(images), 2):
        model.raw_outputs(images[i : i + 2])
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.03


def decoded(model: YOLOv3, outputs: list[torch.Tensor]) -> list[np.ndarray]:
    """detforge's decoding in OpenCV's row layout: per level [B, H*W*A, 5 + C] with cx, cy, w, h
    as fractions of the input, objectness, objectness x class."""
    rows = []
    a = model.anchors_per_level
    for lvl, (raw, stride) in enumerate(zip(outputs, model.strides)):
        group = len(outputs) - 1 - lvl
        p = split_level(raw, a)
        boxes = decode_boxes(p, model.anchors[group * a : (group + 1) * a], stride)
        cxcy = (boxes[..., :2] + boxes[..., 2:]) / 2 / IMGSZ
        wh = (boxes[..., 2:] - boxes[..., :2]) / IMGSZ
        obj = p[..., 4:5].sigmoid()
        out = torch.cat([cxcy, wh, obj, obj * p[..., 5:].sigmoid()], dim=-1)  # [B, A, H, W, 5+C]
        rows.append(out.permute(0, 2, 3, 1, 4).reshape(out.shape[0], -1, out.shape[-1]).numpy())
    return rows


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def compare(ref, out_convs, yolos, outputs, rows) -> dict[str, float]:
    """Raw map difference, and the decoded [yolo] rows: scores (objectness, objectness x class)
    and boxes (x1, y1, x2, y2 in input pixels). OpenCV zeroes objectness x class below its
    [yolo] threshold (0.2 by default), so class scores are compared where OpenCV kept them.
    Boxes are compared where they are at most twice the input in width and height: random
    weights also give t_w up to 14 (boxes of 10^6 px, where float32 keeps no pixel precision,
    and past detforge's clamp of t_w, t_h at 8 before exp())."""
    out = {"raw": max(_max_diff(ref[name][:, 0], o) for name, o in zip(out_convs, outputs)),
           "scores": 0.0, "boxes": 0.0, "box_rows": 0, "rows": 0}
    for name, ours in zip(yolos, rows):
        theirs = ref[name].reshape(ours.shape)
        kept = theirs[..., 5:] > 0
        out["scores"] = max(out["scores"], _max_diff(theirs[..., 4], ours[..., 4]),
                            _max_diff(theirs[..., 5:][kept], ours[..., 5:][kept]))
        sane = (ours[..., 2:4] <= 2).all(-1) & (theirs[..., 2:4] <= 2).all(-1)
        out["boxes"] = max(out["boxes"], _max_diff(_xyxy(theirs[sane]), _xyxy(ours[sane])))
        out["box_rows"] += int(sane.sum())
        out["rows"] += sane.size
    return out


def _xyxy(rows: np.ndarray) -> np.ndarray:
    cxcy, wh = rows[:, :2].astype(np.float64), rows[:, 2:4].astype(np.float64)
    return np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1) * IMGSZ


def opencv_name(index: int, section) -> str | None:
    """The name OpenCV's Darknet reader gives the last op of section ``index`` (None: [yolo])."""
    kind = section.kind
    if kind == "convolutional":  # conv_i, bn_i, then the activation, which OpenCV numbers i + 1
        return f"leaky_{index + 1}" if section.options.get("batch_normalize") else f"conv_{index}"
    if kind == "route":
        return f"{'concat' if ',' in str(section.options['layers']) else 'identity'}_{index}"
    return {"maxpool": f"pool_{index}", "upsample": f"upsample_{index}", "shortcut": f"shortcut_{index}"}.get(kind)


def opencv_forward(opencv_python: str, cfg: Path, weights: Path, inputs: Path, out: Path, layers: list[str],
                   winograd: bool = True):
    """OpenCV 4's outputs of ``layers`` for the images saved in ``inputs`` (opencv_darknet_forward.py)."""
    subprocess.run([opencv_python, str(REPO / "benchmarks" / "opencv_darknet_forward.py"), str(cfg), str(weights),
                    str(inputs), str(out), *layers, *([] if winograd else ["--no-winograd"])], check=True)
    return np.load(out)


@torch.no_grad()
def layerwise(model: YOLOv3, cfg: Path, weights: Path, images: np.ndarray, opencv_python: str,
              work: Path) -> dict[str, float]:
    """Each conv layer alone, fed OpenCV's output of the section before it: the largest difference
    between detforge's and OpenCV's result of one layer, and of each against float64."""
    layout = model.darknet_layout()
    names = [opencv_name(i, s) for i, s in enumerate(layout.sections)]
    np.save(work / "input_layers.npy", images)
    ref = opencv_forward(opencv_python, cfg, weights, work / "input_layers.npy", work / "layers.npz",
                         [n for n in names if n], winograd=False)
    worst = {"layer": 0.0, "layer_torch_fp64": 0.0, "layer_opencv_fp64": 0.0, "layers": 0, "worst_layer": -1}
    for i, s in enumerate(layout.sections):
        if s.kind != "convolutional":
            continue
        given = images if i == 0 else ref[names[i - 1]][:, 0]
        theirs = ref[names[i]][:, 0]
        x = torch.from_numpy(np.ascontiguousarray(given))
        ours = s.module(x).numpy()
        exact = s.module.double()(x.double()).numpy()
        s.module.float()
        d = _max_diff(ours, theirs)
        if d > worst["layer"]:
            worst["layer"], worst["worst_layer"] = d, i
        worst["layer_torch_fp64"] = max(worst["layer_torch_fp64"], _max_diff(ours, exact))
        worst["layer_opencv_fp64"] = max(worst["layer_opencv_fp64"], _max_diff(theirs, exact))
        worst["layers"] += 1
    return worst


def run_size(size: str, images: np.ndarray, opencv_python: str, work: Path, seed: int) -> dict:
    x = torch.from_numpy(images)
    source = YOLOv3(80, size)
    randomise(source, x, seed)
    layout = source.darknet_layout()
    cfg = work / f"{size}.cfg"
    cfg.write_text(layout.to_cfg(IMGSZ, IMGSZ))
    weights = save_darknet_weights(source, work / f"{size}.weights")
    model = YOLOv3(80, size).eval()
    load_darknet_weights(model, weights)
    with torch.no_grad():
        outputs = [o.numpy() for o in model.raw_outputs(x)]
        exact = [o.numpy() for o in model.double().raw_outputs(x.double())]  # float64 reference
        model.float()
    out_convs = [opencv_name(i, s) for i, s in enumerate(layout.sections) if s.kind == "convolutional"
                 and s.options["activation"] == "linear"]
    yolos = [f"yolo_{i}" for i, s in enumerate(layout.sections) if s.kind == "yolo"]
    rows = decoded(model, [torch.from_numpy(o) for o in outputs])
    np.save(work / "input.npy", images)
    result = {"size": size, "params": sum(p.numel() for p in model.parameters()), "convs": len(layout.convs()),
              "raw_scale": max(float(np.abs(o).max()) for o in outputs),
              "torch_fp64": max(_max_diff(a, b) for a, b in zip(outputs, exact))}
    for mode, winograd in (("default", True), ("no_winograd", False)):
        ref = opencv_forward(opencv_python, cfg, weights, work / "input.npy", work / f"{size}_{mode}.npz",
                             out_convs + yolos, winograd)
        result["opencv"] = str(ref["opencv_version"])
        result[mode] = compare(ref, out_convs, yolos, outputs, rows)
        result[f"{mode}_fp64"] = max(_max_diff(ref[name][:, 0], e) for name, e in zip(out_convs, exact))
    result["layerwise"] = layerwise(model, cfg, weights, images[:2], opencv_python, work)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="yolov3-tiny,yolov3")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--opencv-python", default="/work/venvs/opencv4/bin/python")
    parser.add_argument("--data", default="/work/shared/datasets/bccd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, described = load_images(Path(args.data), args.images, args.seed)
    print(f"inputs: {len(images)} x 416x416, {described}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            rows.append(run_size(size.strip(), images, args.opencv_python, Path(tmp), args.seed))
    print(f"\nOpenCV {rows[0]['opencv']}, torch {torch.__version__}\n")
    print("| model | params (80 classes) | Darknet convs | largest raw value | raw maps, OpenCV default "
          "| raw maps, OpenCV Winograd off | detforge fp32 vs fp64 | OpenCV (Winograd off) vs fp64 "
          "| scores | boxes (px) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d, n = r["default"], r["no_winograd"]
        print(f"| {r['size']} | {r['params']:,} | {r['convs']} | {r['raw_scale']:.1f} | {d['raw']:.1e} | {n['raw']:.1e} "
              f"| {r['torch_fp64']:.1e} | {r['no_winograd_fp64']:.1e} | {n['scores']:.1e} "
              f"| {n['boxes']:.1e} ({n['box_rows']} of {n['rows']} rows) |")
    print("\nEach conv layer alone (fed OpenCV's output of the section before it; first 2 images, Winograd off):\n")
    print("| model | conv layers | detforge vs OpenCV, largest over layers | at layer | detforge fp32 vs fp64 "
          "| OpenCV vs fp64 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        w = r["layerwise"]
        print(f"| {r['size']} | {w['layers']} | {w['layer']:.1e} | {w['worst_layer']} | {w['layer_torch_fp64']:.1e} "
              f"| {w['layer_opencv_fp64']:.1e} |")
    bad = [r["size"] for r in rows if r["layerwise"]["layer"] > args.tol]
    if bad:
        print(f"FAIL: a single layer differs by more than {args.tol:g} for {', '.join(bad)}")
    far = [r["size"] for r in rows if r["no_winograd"]["raw"] > args.tol]
    if far:
        print(f"FAIL: end to end above {args.tol:g} for {', '.join(far)}"
              + ("; every layer alone is within it (float32 rounding adds up with depth; compare "
                 "'detforge fp32 vs fp64' in the first table)" if not set(far) & set(bad) else ""))
    return 1 if bad or far else 0


if __name__ == "__main__":
    sys.exit(main())
