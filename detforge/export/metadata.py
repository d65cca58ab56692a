"""What an exported model needs to be used correctly, stored inside the file itself.

ONNX keeps it in ``metadata_props`` and OpenVINO in ``rt_info['model_info']`` (string values
in both); a TensorRT engine has no metadata slot, so a ``.json`` file beside it carries the
same keys. Every reader returns one ``ExportMetadata``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NORMALISATION = "0..1 RGB"  # input = RGB / 255, the model applies its own mean/std inside
FIXED = {"task": "detect", "framework": "detforge"}


@dataclass
class ExportMetadata:
    names: list[str]
    imgsz: tuple[int, int]  # (height, width) the model was exported at (and trained at, square)
    resize_mode: str = "stretch"  # "stretch" | "letterbox": how images are fitted to imgsz
    conf: float | list[float] = 0.25  # one threshold, or one per class
    model: str = ""
    stride: int = 32
    max_det: int = 300
    dynamic: bool = False  # height / width may change at run time (the batch always may)
    half: bool = False
    normalisation: str = NORMALISATION
    extra: dict[str, str] = field(default_factory=dict)

    def to_strings(self) -> dict[str, str]:
        """Flat string map: the form ONNX metadata_props and OpenVINO rt_info hold."""
        values = asdict(self)
        extra = values.pop("extra")
        out = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in values.items()}
        return {**extra, **out, **FIXED}

    @classmethod
    def from_strings(cls, raw: dict[str, str], source: str | Path = "") -> "ExportMetadata":
        if "names" not in raw or "imgsz" not in raw:
            raise ValueError(
                f"{source}: no detforge metadata (names / imgsz missing): export it with `detforge export`, "
                "or pass imgsz= and names yourself"
            )
        try:
            names = json.loads(raw["names"])
            imgsz = json.loads(raw["imgsz"])
            imgsz = (int(imgsz), int(imgsz)) if isinstance(imgsz, (int, float)) else (int(imgsz[0]), int(imgsz[1]))
            known = {k: raw[k] for k in ("resize_mode", "model", "normalisation") if k in raw}
            numbers = {k: json.loads(raw[k]) for k in ("conf", "stride", "max_det", "dynamic", "half") if k in raw}
        except (ValueError, TypeError, IndexError) as e:
            raise ValueError(f"{source}: damaged detforge metadata ({e})") from None
        extra = {k: v for k, v in raw.items() if k not in cls.__dataclass_fields__ and k not in FIXED}
        return cls(names=[str(n) for n in names], imgsz=imgsz, extra=extra, **known, **numbers)


def checkpoint_conf(ckpt: dict[str, Any]) -> float | list[float] | None:
    """The thresholds a training run chose: per-class ``class_conf`` when present, else ``conf``."""
    per_class = ckpt.get("class_conf")
    if per_class is not None:
        return [float(c) for c in per_class]
    conf = ckpt.get("conf", (ckpt.get("config") or {}).get("conf"))
    return None if conf is None else float(conf)


# ---------------------------------------------------------------- per-format storage
def write_onnx_metadata(model_proto, meta: ExportMetadata) -> None:
    del model_proto.metadata_props[:]
    for key, value in meta.to_strings().items():
        prop = model_proto.metadata_props.add()
        prop.key, prop.value = key, value


def read_onnx_metadata(path: str | Path) -> ExportMetadata:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return ExportMetadata.from_strings({p.key: p.value for p in proto.metadata_props}, path)


def onnxruntime_metadata(session, path: str | Path) -> ExportMetadata:
    return ExportMetadata.from_strings(dict(session.get_modelmeta().custom_metadata_map), path)


def write_openvino_metadata(ov_model, meta: ExportMetadata) -> None:
    for key, value in meta.to_strings().items():
        ov_model.set_rt_info(value, ["model_info", key])


def read_openvino_metadata(ov_model, path: str | Path) -> ExportMetadata:
    raw: dict[str, str] = {}
    if ov_model.has_rt_info(["model_info"]):
        info = ov_model.get_rt_info(["model_info"])
        for key in info.astype(dict):
            raw[key] = str(ov_model.get_rt_info(["model_info", key]).astype(str))
    return ExportMetadata.from_strings(raw, path)


def sidecar_path(engine: str | Path) -> Path:
    return Path(engine).with_suffix(".json")


def write_sidecar(engine: str | Path, meta: ExportMetadata) -> Path:
    path = sidecar_path(engine)
    path.write_text(json.dumps(meta.to_strings(), indent=2))
    return path


def read_sidecar(engine: str | Path) -> ExportMetadata:
    path = sidecar_path(engine)
    if not path.is_file():
        raise FileNotFoundError(f"{engine}: its metadata file {path.name} is missing (written by `detforge export`)")
    return ExportMetadata.from_strings(json.loads(path.read_text()), path)
