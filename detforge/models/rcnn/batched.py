"""R-CNN inference for a whole batch at once, with fixed-size outputs: the export graph.

torchvision's R-CNN inference loops over the images of a batch in Python (proposal
filtering, RoI pooling from a list of per-image boxes, per-image NMS). Traced into ONNX that
loop is unrolled, so the graph would only serve the batch size it was traced with. Here the
same steps run on the batch as one tensor, using the same torchvision modules and the same
thresholds, so one graph serves any batch size (and, with ``dynamic=true``, any input size):

1. RPN: the head's objectness and deltas for every anchor, decoded with the RPN's box coder;
   per image and level the ``pre_nms_top_n`` best (levels are padded with empty candidates, so
   top-k never asks for more than exist), clipped, small and low-scoring ones dropped, NMS per
   image and level (``rpn.nms_thresh``), the ``post_nms_top_n`` best per image kept. Images
   with fewer proposals carry invalid rows, which the next step leaves out.
2. RoI box head on the valid proposals (RoIAlign per FPN level, as ``MultiScaleRoIAlign``
   maps them), softmax, per-class boxes decoded and clipped, background dropped, scores above
   ``roi_heads.score_thresh`` kept, NMS per image and class (``roi_heads.nms_thresh``), the
   ``max_det`` best per image, zero-padded to a fixed [B, K].
3. Mask head (Mask R-CNN) on the real detections: the RoI mask probabilities of each
   detection's own class, [B, K, M, M] (M = 28), zero on padding rows. Pasting them into the image is left to
   ``detforge.models.masks.paste_masks``: K full-image masks per image would be a very large
   graph output.

Each step keeps exactly torchvision's rule, so the detections equal the eager model's
(``tests/test_rcnn.py`` compares them, and ONNX Runtime's against these).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import batched_nms, clip_boxes_to_image, roi_align
from torchvision.ops.poolers import MultiScaleRoIAlign, _filter_input, _setup_scales

# torchvision's RoIHeads drops predicted boxes smaller than this (px) before NMS
MIN_DETECTION_SIZE = 1e-2


def roi_align_levels(pool: MultiScaleRoIAlign, features: dict[str, Tensor], rois: Tensor,
                     image_hw: tuple[int, int]) -> Tensor:
    """``MultiScaleRoIAlign`` for RoIs given as one [N, 5] tensor (image index, x1, y1, x2, y2)
    instead of a per-image list; same level mapping, same RoIAlign calls. The per-level results
    are put back in RoI order by one gather (torchvision's export path scatters every pooled
    value through an index as large as the output, which dominated ONNX Runtime's time)."""
    maps = _filter_input(features, pool.featmap_names)
    scales, mapper = _setup_scales(maps, [image_hw], pool.canonical_scale, pool.canonical_level)
    if len(maps) == 1:
        return roi_align(maps[0], rois, pool.output_size, scales[0], pool.sampling_ratio)
    levels = mapper([rois[:, 1:]])
    order, pooled = [], []
    for level, (fmap, scale) in enumerate(zip(maps, scales)):
        idx = torch.where(levels == level)[0]
        order.append(idx)
        pooled.append(roi_align(fmap, rois[idx], pool.output_size, scale, pool.sampling_ratio).to(maps[0].dtype))
    order = torch.cat(order)  # a permutation of 0..N-1: row j of the concatenation is RoI order[j]
    position = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0], device=order.device))
    return torch.cat(pooled)[position]


def _image_index(batch, per_image, like: Tensor) -> Tensor:
    """[B, N] tensor holding each row's image number (the batch axis stays symbolic in a graph)."""
    return torch.arange(batch, device=like.device)[:, None].expand(batch, per_image)


def rpn_proposals(rpn, images: Tensor, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(proposals [B, P, 4], valid [B, P]) with P = ``rpn.post_nms_top_n()``."""
    batch = images.shape[0]
    hw = images.shape[-2:]
    maps = list(features.values())
    objectness, deltas = rpn.head(maps)
    # anchors depend only on the input size: one image's set serves the whole batch
    anchors = rpn.anchor_generator(ImageList(images[:1], [(hw[0], hw[1])]), maps)[0]
    per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    boxes = rpn.box_coder.decode_single(deltas, anchors.repeat(batch, 1)).reshape(batch, -1, 4)
    objectness = objectness.reshape(batch, -1)

    top_n = rpn.pre_nms_top_n()
    cand_boxes, cand_obj, cand_level, cand_real = [], [], [], []
    start = 0
    for level, count in enumerate(per_level):
        obj = objectness[:, start : start + count]
        box = boxes[:, start : start + count]
        start = start + count
        # pad so top-k always has top_n columns, whatever the level's size
        obj = torch.cat([obj, obj.new_full((batch, top_n), float("-inf"))], dim=1)
        box = torch.cat([box, box.new_zeros(batch, top_n, 4)], dim=1)
        top_obj, idx = obj.topk(top_n, dim=1)
        cand_obj.append(top_obj)
        cand_boxes.append(box.gather(1, idx[..., None].expand(-1, -1, 4)))
        cand_level.append(torch.full_like(idx, level))
        cand_real.append(idx < count)
    obj = torch.cat(cand_obj, 1)
    level = torch.cat(cand_level, 1)
    boxes = clip_boxes_to_image(torch.cat(cand_boxes, 1), hw)
    prob = torch.sigmoid(obj)
    wh = boxes[..., 2:] - boxes[..., :2]
    valid = (torch.cat(cand_real, 1) & (wh >= rpn.min_size).all(-1) & (prob >= rpn.score_thresh))

    num = obj.shape[1]
    groups = (_image_index(batch, num, obj) * len(per_level) + level).reshape(-1)
    flat_valid = torch.where(valid.reshape(-1))[0]
    flat_boxes, flat_prob = boxes.reshape(-1, 4), prob.reshape(-1)
    keep = flat_valid[batched_nms(flat_boxes[flat_valid], flat_prob[flat_valid], groups[flat_valid], rpn.nms_thresh)]
    # kept candidates keep their probability (>= 0), everything else ranks below them
    ranked = torch.full_like(flat_prob, -1.0).scatter(0, keep, flat_prob[keep]).reshape(batch, num)
    post_n = rpn.post_nms_top_n()
    ranked = torch.cat([ranked, ranked.new_full((batch, post_n), -1.0)], dim=1)
    boxes = torch.cat([boxes, boxes.new_zeros(batch, post_n, 4)], dim=1)
    top, idx = ranked.topk(post_n, dim=1)
    return boxes.gather(1, idx[..., None].expand(-1, -1, 4)), top >= 0


def detect(model, images: Tensor, max_det: int) -> tuple[Tensor, ...]:
    """images 0..1 RGB [B, 3, H, W] -> (boxes [B, K, 4], scores [B, K], labels [B, K] 0-based
    detforge classes[, masks [B, K, M, M] RoI probabilities]), K = ``max_det``; rows past an
    image's detections have score 0, box 0, label 0 (and mask 0). The RoI heads run on the
    valid proposals and the mask head on the real detections only, as in torchvision."""
    heads = model.roi_heads
    x = model.transform.normalize_batch(images)
    batch = x.shape[0]
    hw = x.shape[-2:]
    features = model.backbone(x)
    proposals, proposal_valid = rpn_proposals(model.rpn, x, features)
    num_props = proposals.shape[1]

    # one row per live proposal: (image, x1, y1, x2, y2); ``live`` is its row in [B * P]
    live = torch.where(proposal_valid.reshape(-1))[0]
    image_of = torch.div(live, num_props, rounding_mode="floor")
    rois = torch.cat([image_of[:, None].to(proposals.dtype), proposals.reshape(-1, 4)[live]], dim=1)
    pooled = roi_align_levels(heads.box_roi_pool, features, rois, (hw[0], hw[1]))
    class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
    num_cls = class_logits.shape[-1]  # background included
    pred = heads.box_coder.decode_single(box_regression, rois[:, 1:]).reshape(-1, num_cls, 4)
    pred = clip_boxes_to_image(pred, hw)[:, 1:].reshape(-1, 4)  # column 0 is background
    scores = torch.softmax(class_logits, -1)[:, 1:]
    fg = num_cls - 1
    labels = torch.arange(fg, device=x.device)[None].expand(scores.shape[0], fg)
    scores = scores.reshape(-1)
    wh = pred[:, 2:] - pred[:, :2]
    valid = (scores > heads.score_thresh) & (wh >= MIN_DETECTION_SIZE).all(-1)
    groups = (image_of[:, None] * fg + labels).reshape(-1)
    cand = torch.where(valid)[0]
    keep = cand[batched_nms(pred[cand], scores[cand], groups[cand], heads.nms_thresh)]
    # each kept (proposal, class) goes to its slot of a fixed [B, P * fg] layout; kept scores
    # are > score_thresh >= 0, so zero marks empty slots and padding
    slot = (live[:, None] * fg + labels).reshape(-1)[keep]
    size = batch * num_props * fg
    kept = torch.zeros(size, dtype=scores.dtype, device=x.device).scatter(0, slot, scores[keep]).reshape(batch, -1)
    boxes = torch.zeros(size, 4, dtype=pred.dtype, device=x.device).scatter(
        0, slot[:, None].expand(-1, 4), pred[keep]).reshape(batch, -1, 4)
    kept = torch.cat([kept, kept.new_zeros(batch, max_det)], dim=1)
    boxes = torch.cat([boxes, boxes.new_zeros(batch, max_det, 4)], dim=1)
    top_scores, idx = kept.topk(max_det, dim=1)
    real = top_scores > 0
    top_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4))
    top_labels = (idx % fg) * real.to(idx.dtype)
    if not getattr(model, "supports_masks", False):
        return top_boxes, top_scores, top_labels

    found = torch.where(real.reshape(-1))[0]
    found_image = torch.div(found, max_det, rounding_mode="floor")
    mask_rois = torch.cat([found_image[:, None].to(top_boxes.dtype), top_boxes.reshape(-1, 4)[found]], dim=1)
    mask_logits = heads.mask_predictor(heads.mask_head(
        roi_align_levels(heads.mask_roi_pool, features, mask_rois, (hw[0], hw[1]))))
    side = mask_logits.shape[-1]
    # the map of each detection's own class (+1: torchvision's background column)
    channel = (top_labels.reshape(-1)[found] + 1)[:, None, None, None].expand(-1, 1, side, side)
    probs = mask_logits.gather(1, channel).sigmoid()[:, 0]
    masks = torch.zeros(batch * max_det, side, side, dtype=probs.dtype, device=x.device).scatter(
        0, found[:, None, None].expand(-1, side, side), probs)
    return top_boxes, top_scores, top_labels, masks.reshape(batch, max_det, side, side)
