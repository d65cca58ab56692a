"""The model's Darknet form: its sections in ``.cfg`` order, built by walking the modules.

One walk serves three jobs, so they cannot disagree: the ``.cfg`` text (``to_cfg``, what Darknet
and OpenCV's Darknet reader build the same network from), the order of the conv layers in a
``.weights`` file (``convs``, see darknet_weights.py), and the parameter count a cfg defines.
Layer indices are Darknet's: every section, convolutional or not, takes one index, and routes
and shortcuts refer to earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from detforge.models.yolov3.blocks import ConvBNLeaky


@dataclass
class Section:
    kind: str  # convolutional | shortcut | route | maxpool | upsample | yolo
    options: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # the ConvBNLeaky or plain Conv2d of a [convolutional]


class DarknetLayout:
    """Sections appended in forward order; each append returns the section's Darknet index."""

    def __init__(self) -> None:
        self.sections: list[Section] = []

    @property
    def last(self) -> int:
        return len(self.sections) - 1

    def _add(self, section: Section) -> int:
        self.sections.append(section)
        return self.last

    def conv(self, module: nn.Module) -> int:
        conv = module.conv if isinstance(module, ConvBNLeaky) else module
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"a [convolutional] needs a ConvBNLeaky or Conv2d, got {type(module).__name__}")
        bn = isinstance(module, ConvBNLeaky)
        options = {"filters": conv.out_channels, "size": conv.kernel_size[0], "stride": conv.stride[0], "pad": 1,
                   "activation": "leaky" if bn else "linear"}
        if bn:
            options = {"batch_normalize": 1, **options}
        return self._add(Section("convolutional", options, module))

    def shortcut(self, source: int) -> int:
        return self._add(Section("shortcut", {"from": source - len(self.sections), "activation": "linear"}))

    def route(self, *sources: int) -> int:
        # the nearest layers by offset (-1, -4), backbone taps by absolute index, as Darknet's cfgs do
        here = len(self.sections)
        refs = [str(s - here) if here - s <= 8 else str(s) for s in sources]
        return self._add(Section("route", {"layers": ", ".join(refs)}))

    def maxpool(self, size: int, stride: int) -> int:
        return self._add(Section("maxpool", {"size": size, "stride": stride}))

    def upsample(self, stride: int = 2) -> int:
        return self._add(Section("upsample", {"stride": stride}))

    def yolo(self, mask: list[int], anchors: list[tuple[float, float]], classes: int) -> int:
        options = {
            "mask": ",".join(str(m) for m in mask),
            "anchors": ",  ".join(f"{_num(w)},{_num(h)}" for w, h in anchors),
            "classes": classes,
            "num": len(anchors),
        }
        return self._add(Section("yolo", options))

    def convs(self) -> list[nn.Module]:
        """The conv modules in ``.weights`` order."""
        return [s.module for s in self.sections if s.kind == "convolutional"]

    def to_cfg(self, width: int, height: int) -> str:
        lines = ["[net]", "batch=1", "subdivisions=1", f"width={width}", f"height={height}", "channels=3", ""]
        for s in self.sections:
            lines.append(f"[{s.kind}]")
            lines.extend(f"{k}={v}" for k, v in s.options.items())
            lines.append("")
        return "\n".join(lines)


def _num(v: float) -> str:
    # anchors fitted by k-means are not whole pixels; Darknet and OpenCV parse floats
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}".rstrip("0")
