"""The contract data-parallel training needs from every model family (see
DetectionModel.find_unused_parameters): every trainable parameter gets a gradient from every
batch, also one without any box, so no rank leaves DDP's all-reduce or FSDP's reduce-scatter
short. A family that breaks it hangs under DDP (its first background-only batch on one rank)
and fails under FSDP. Kept apart from test_distributed.py, whose spawned ranks re-import their
module and should not build every family to do so."""

from __future__ import annotations

import pytest
import torch

IMGSZ = 128


# the smallest model of each family (a family not listed here is checked with its first name)
SMALLEST = {"dfine": "dfine-n", "fcos": "fcos-n", "rcnn": "faster-rcnn-mbv3", "yolov3": "yolov3-tiny",
            "efficientdet": "efficientdet-d0"}


def _one_model_per_family() -> list[str]:
    from detforge.models.zoo import available, get_spec

    by_family: dict[str, list[str]] = {}
    for name in available():
        by_family.setdefault(get_spec(name).family, []).append(name)
    return sorted(SMALLEST[f] if SMALLEST.get(f) in names else sorted(names)[0] for f, names in by_family.items())


def _targets(boxes_per_image: list[int], size: int, masks: bool) -> list[dict[str, torch.Tensor]]:
    out = []
    for n in boxes_per_image:
        boxes = torch.tensor([[10.0, 12.0, 70.0, 90.0]] * n).reshape(-1, 4)
        t = {"boxes": boxes, "labels": torch.ones(n, dtype=torch.int64)}
        if masks:
            t["masks"] = torch.zeros(n, size, size, dtype=torch.uint8)
            t["masks"][:, 12:90, 10:70] = 1
        out.append(t)
    return out


@pytest.mark.parametrize("name", _one_model_per_family())
def test_every_parameter_gets_a_gradient_on_background_batches(name):
    """A batch without any box, and one with boxes in one image only, give every trainable
    parameter a gradient, and a finite loss."""
    from detforge.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model(name, 3)
    if model.find_unused_parameters:
        pytest.skip(f"{name} declares find_unused_parameters: DDP searches the graph; fsdp is refused")
    model.train()
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    for counts in ([0, 0], [1, 0]):
        model.zero_grad(set_to_none=True)
        losses = model(x, _targets(counts, IMGSZ, model.supports_masks))
        total = sum(losses.values())
        assert torch.isfinite(total), (counts, {k: float(v) for k, v in losses.items()})
        total.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name}, boxes per image {counts}: no gradient for {missing}"
