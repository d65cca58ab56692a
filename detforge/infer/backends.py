"""One calling convention over every runtime: ``backend(images [B,3,H,W] float 0..1 numpy)``
-> (boxes [B,K,4] xyxy input px, scores [B,K], labels [B,K]) as numpy, K fixed per model,
rows past the detections have score 0; a mask model adds a fourth output, ``masks``
[B,K,M,M]: each detection's mask probabilities inside its box (RoI resolution), which the
Predictor pastes into the image (``detforge.models.masks.paste_masks``). The backend follows from the file's suffix:
.pt torch, .onnx onnxruntime, .xml OpenVINO, .engine TensorRT (``backend=`` overrides,
e.g. OpenVINO can run an .onnx directly)."""

from __future__ import annotations

import logging
import os
from typing import Any
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detforge.export.metadata import ExportMetadata

LOG = logging.getLogger("detforge")
SUFFIX_BACKEND = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt"}
BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


class Backend:
    name = "base"
    meta: ExportMetadata
    dynamic_hw = True  # input height / width may change between calls
    fixed_batch: int | None = None  # a model built for one batch size only
    input_dtype = np.float32

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError


def _default_threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: nn.Module, meta: ExportMetadata, device: torch.device, half: bool = False,
                 threads: int | None = None) -> None:
        import copy

        self.device = device
        self.half = bool(half and device.type == "cuda")
        # a fused eval copy: the caller's model (maybe still training) keeps its form
        self.model = copy.deepcopy(model).to(device).eval()
        self.model = self.model.deploy() if hasattr(self.model, "deploy") else self.model
        self.model.eval()
        if self.half:
            self.model.half()
        self.meta = meta
        if threads:
            torch.set_num_threads(int(threads))

    @torch.inference_mode()
    def __call__(self, images: np.ndarray):
        x = torch.from_numpy(images).to(self.device, torch.float16 if self.half else torch.float32)
        boxes, scores, labels, *masks = self.model.export_forward(x, self.meta.max_det)
        out = boxes.float().cpu().numpy(), scores.float().cpu().numpy(), labels.cpu().numpy()
        return out + tuple(m.float().cpu().numpy() for m in masks[:1])


def load_torch_checkpoint(path: Path, device: torch.device, threads: int | None = None,
                          decoder_layers: int | None = None) -> TorchBackend:
    from detforge.engine.checkpoint import load_detector_checkpoint
    from detforge.export.metadata import checkpoint_conf

    model, ckpt = load_detector_checkpoint(path, decoder_layers=decoder_layers)
    saved = ckpt.get("config") or {}
    imgsz = int(ckpt.get("imgsz", saved.get("imgsz", 640)))
    conf = checkpoint_conf(ckpt)
    meta = ExportMetadata(
        names=list(ckpt.get("names") or [str(i) for i in range(model.num_classes)]),
        imgsz=(imgsz, imgsz), resize_mode=ckpt.get("resize_mode", saved.get("resize_mode", "stretch")),
        conf=0.25 if conf is None else conf, model=str(ckpt.get("model_name", "")),
        stride=int(getattr(model, "stride", 32)), max_det=int(saved.get("max_det", 300)), dynamic=True,
    )
    return TorchBackend(model, meta, device, threads=threads)


def onnxruntime_session_options(threads: int | None = None):
    """detforge's onnxruntime session: ``threads`` intra-op threads (default: the machine's
    cores), one inter-op thread, every graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or _default_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, device: torch.device, threads: int | None = None) -> None:
        import onnxruntime as ort

        from detforge.export.metadata import onnxruntime_metadata

        opts = onnxruntime_session_options(threads)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(f"{path}: device={device} but this onnxruntime has no CUDA provider "
                                 "(pip install onnxruntime-gpu), or use device=cpu")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.meta = onnxruntime_metadata(self.session, path)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        self.dynamic_hw = not all(isinstance(d, int) for d in inp.shape[2:])
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        names = [o.name for o in self.session.get_outputs()]
        self.output_names = names[:3] + [n for n in names[3:] if n == "masks"]

    def __call__(self, images: np.ndarray):
        boxes, scores, labels, *masks = self.session.run(
            self.output_names, {self.input_name: images.astype(self.input_dtype, copy=False)})
        return (boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64),
                *(m.astype(np.float32) for m in masks))


def openvino_precision_config(half: bool) -> dict[str, str]:
    """OpenVINO's CPU plugin computes in bf16 by default wherever the CPU has bf16 units, even
    for an FP32 model (measured: scores off by up to 4e-4 against torch, vs 1e-7 in f32). An
    FP32 export runs in f32; a half export keeps the device's fast precision (bf16 or f16)."""
    return {} if half else {"INFERENCE_PRECISION_HINT": "f32"}


def openvino_config(threads: int | None, half: bool) -> dict[str, Any]:
    """detforge's OpenVINO compile settings: latency hint, ``threads`` (default: the machine's
    cores), and the precision of ``openvino_precision_config``."""
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads or _default_threads()),
            **openvino_precision_config(half)}


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None) -> None:
        from detforge.export.metadata import read_onnx_metadata, read_openvino_metadata
        from detforge.export.openvino import require_openvino

        ov = require_openvino()
        core = ov.Core()
        model = core.read_model(str(path))
        self.meta = read_onnx_metadata(path) if path.suffix == ".onnx" else read_openvino_metadata(model, path)
        inp = model.input(0).get_partial_shape()
        self.dynamic_hw = inp[2].is_dynamic or inp[3].is_dynamic
        self.fixed_batch = None if inp[0].is_dynamic else inp[0].get_length()
        target = "CPU" if str(device).lower() in ("auto", "cpu", "") else str(device).upper()
        self.compiled = core.compile_model(model, target, openvino_config(threads, self.meta.half))
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # f32, bf16, f16
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(i) for i in range(3)]
        self.outputs += [o for o in self.compiled.outputs[3:] if "masks" in o.get_names()]

    def __call__(self, images: np.ndarray):
        result = self.request.infer({0: images})
        boxes, scores, labels, *masks = (result[o] for o in self.outputs)
        return (boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64),
                *(m.astype(np.float32) for m in masks))


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path, device: torch.device) -> None:
        from detforge.export.metadata import read_sidecar
        from detforge.export.tensorrt import require_tensorrt

        trt = require_tensorrt()
        if device.type != "cuda":
            raise ValueError(f"{path}: a TensorRT engine runs on a CUDA device, got device={device}")
        self.trt, self.device = trt, device
        self.meta = read_sidecar(path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{path}: TensorRT cannot load this engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        outputs = [n for n in names if n != self.input_name]
        self.output_names = [n for n in ("boxes", "scores", "labels", "masks") if n in outputs] or outputs[:3]
        shape = self.engine.get_tensor_shape(self.input_name)
        self.dynamic_hw = shape[2] == -1 or shape[3] == -1
        self.fixed_batch = None if shape[0] == -1 else int(shape[0])
        self.input_torch_dtype = self._torch_dtype(self.input_name)

    def _torch_dtype(self, name: str) -> torch.dtype:
        return torch.from_numpy(np.zeros(1, self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def __call__(self, images: np.ndarray):
        x = torch.from_numpy(images).to(self.device, self.input_torch_dtype).contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outs = []
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._torch_dtype(name), device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        boxes, scores, labels, *masks = (o.cpu().numpy() for o in outs)
        return (boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64),
                *(m.astype(np.float32) for m in masks))


def resolve_device(device: str | None) -> torch.device:
    from detforge.utils.runtime import select_device

    return select_device(device or "auto")


def load_backend(path: str | Path, backend: str | None = None, device: str = "auto", threads: int | None = None,
                 decoder_layers: int | None = None) -> Backend:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    kind = backend or SUFFIX_BACKEND.get(path.suffix.lower())
    if decoder_layers is not None and kind != "torch":
        raise ValueError(f"decoder_layers={decoder_layers} applies when loading a .pt checkpoint; {path} keeps the "
                         "decoder layers it was exported with (export with decoder_layers= instead)")
    if kind is None:
        raise ValueError(f"{path}: unknown model file type '{path.suffix}'; expected one of "
                         f"{', '.join(SUFFIX_BACKEND)} (or pass backend=)")
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; allowed: {', '.join(BACKENDS)}")
    if kind == "openvino":
        return OpenVINOBackend(path, "cpu" if device == "auto" else device, threads)
    expected = {"torch": (".pt", ".pth"), "onnxruntime": (".onnx",), "tensorrt": (".engine",)}[kind]
    if path.suffix.lower() not in expected:
        raise ValueError(f"{path}: backend={kind} runs {'/'.join(expected)} files; export it first "
                         f"(detforge export model=... format=...)")
    if kind == "onnxruntime" and device in ("auto", "", None):
        import onnxruntime as ort

        # auto means the GPU only where this onnxruntime build can use it
        device = "auto" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    dev = resolve_device(device)
    if kind == "torch":
        return load_torch_checkpoint(path, dev, threads, decoder_layers)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(path, dev, threads)
    return TensorRTBackend(path, dev)
