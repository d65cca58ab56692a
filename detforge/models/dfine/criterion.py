"""D-FINE training loss: VFL (or DEIM's MAL), L1, GIoU, FGL and DDF on every decoder layer,
the first-layer ("pre") head, the encoder proposals and the denoising queries.

Semantics follow the D-FINE paper (arXiv 2410.13842) and its official configs:
- classification terms use each layer's own Hungarian matching;
- box (L1, GIoU) and local (FGL, DDF) terms of the decoder layers use the union of the matches of
  all layers (GO-LSD), normalised by the size of that union;
- denoising queries are matched to the target they were made from, normalised by
  num_boxes * dn_num_group;
- box counts are averaged over ranks when torch.distributed is initialised.

Targets given to the criterion: one dict per image with ``labels`` int64 [N] (0-based, < num_classes),
``boxes`` float [N, 4] cxcywh normalised to 0..1, and optionally ``weights`` float [N] (per-box
loss weights, e.g. from geometry-preserving MixUp: they scale the matched queries' classification
weight and the L1, GIoU and FGL terms of those boxes). N may be 0 in any or all images.

Two additions to the official recipe, both off by default:
- ``use_mal``: DEIM's Matchability-Aware Loss (arXiv 2412.04234) replaces VFL. Its positive
  target is IoU**mal_gamma with weight 1, so poorly localised matches keep a real gradient,
  which speeds up convergence on small datasets (see the project's design notes).
- ``label_smoothing`` = e: a matched query's class target becomes (1 - e) * one_hot + e / K
  (then scaled by the match quality as usual). Unmatched queries keep a target of 0: smoothing
  them would push hundreds of background queries towards non-zero scores.

With ``o2m_repeats`` = k > 0 and ``o2m_outputs`` in the outputs (the decoder's training-only
one-to-many group), that group gets the same terms against the targets repeated k times, so
Hungarian matching gives each object k positive queries (H-DETR's hybrid matching, arXiv
2207.13080); its terms are named ``loss_<term>_o2m...``, normalised by k * num_boxes and scaled by
``o2m_weight``. The one-to-one terms are unchanged.

With ``enc_o2m_repeats`` = k > 0 and ``enc_dense_outputs`` in the outputs (every encoder cell's
class logits and box, not only the cells selected as queries), those cells are Hungarian-matched
to the targets repeated k times: each object gets its k cheapest cells as positives and every
other cell is a negative, where the official encoder loss sees only the selected cells and one
positive per object. The classification and L1 / GIoU terms are named ``loss_<term>_enc_o2m``,
normalised by k * num_boxes and scaled by ``enc_o2m_weight``.

With ``class_ce`` = w > 0, every layer whose classification term has more than one class also
gets w times a softmax cross-entropy over the classes of its matched queries (weighted per box
like the positives, normalised like its classification term). MAL and VFL score each class as a
separate yes/no, and a matched query's wrong classes are pushed down only in proportion to how
high they already score, so early in a run a found object's class is learned slowly; the
cross-entropy asks directly which class it is, on the matched queries only, and leaves the
background queries to MAL / VFL. It is training-only: the model and its outputs are unchanged.

With ``dup_weight`` = w != 1, an unmatched decoder query whose box overlaps a target at IoU >=
``dup_iou`` (0.5) gets w times its negative weight in that target's class: such a query is a
duplicate, a false positive at mAP50 that a DETR must learn to score down through its
self-attention, since its deploy graph has no NMS to remove it. Only the one-to-one decoder
terms (final, auxiliary and first-layer heads) change; encoder proposals, denoising queries and
the one-to-many group keep the plain weights, since overlapping boxes are expected there.

Everything is computed in float32 with autocast disabled, so fp16/bf16 model outputs are safe;
empty images, empty batches, zero-size and inverted boxes give finite values. Unlike the reference,
a NaN loss is not silently replaced by 0: it reaches the caller, whose job is to report it.
Class-agnostic encoder proposals (enc_meta class_agnostic) are matched with class-0 targets.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from torchvision.ops import box_iou

from detforge.models.dfine.box_ops import bbox2distance, cxcywh_to_xyxy, paired_box_iou
from detforge.models.dfine.fdr import weighting_function
from detforge.models.dfine.loss_terms import (
    box_regression_losses,
    class_cross_entropy,
    decoupled_distillation_loss,
    fine_grained_localization_loss,
    matchability_aware_loss,
    varifocal_loss,
)
from detforge.models.dfine.matcher import HungarianMatcher, MatchIndices

# official D-FINE weights (configs/dfine/include/dfine_hgnetv2.yml); "mal" takes VFL's place
DEFAULT_WEIGHTS: dict[str, float] = {"vfl": 1.0, "mal": 1.0, "bbox": 5.0, "giou": 2.0, "fgl": 0.15, "ddf": 1.5}
# DDF balances positives and negatives as if each device held 8 images (official choice)
DDF_REFERENCE_BATCH = 8.0


# --------------------------------------------------------------------------- matching helpers


def union_of_matches(matchings: list[MatchIndices]) -> MatchIndices:
    """GO-LSD's union set: per image, every query matched in any of ``matchings``, paired with
    the target it was matched to most often. Rows come out ordered by that count, most
    frequent first."""
    result = []
    for per_layer in zip(*matchings):
        rows = torch.cat([r for r, _ in per_layer])
        cols = torch.cat([c for _, c in per_layer])
        if rows.numel() == 0:
            result.append((rows.long(), cols.long()))
            continue
        pairs, counts = torch.unique(torch.stack([rows, cols], 1), dim=0, return_counts=True)
        # ties keep torch.argsort's own (unstable) order, as the reference implementation does,
        # so the chosen pairs, and with them the loss values, are identical to it
        pairs = pairs[torch.argsort(counts, descending=True)]
        # keep each query's first (most frequent) pair
        query_ids, inverse = torch.unique(pairs[:, 0], return_inverse=True)
        position = torch.arange(len(pairs), device=pairs.device)
        first = torch.full((len(query_ids),), len(pairs), dtype=torch.long, device=pairs.device)
        first = first.scatter_reduce(0, inverse, position, reduce="amin").sort().values
        result.append((pairs[first, 0].long(), pairs[first, 1].long()))
    return result


def denoising_matches(dn_meta: dict, targets: list[dict[str, Tensor]]) -> MatchIndices:
    """Each denoising group holds one positive query per target, in target order."""
    groups = int(dn_meta["dn_num_group"])
    positive_idx = dn_meta.get("dn_positive_idx")
    result = []
    for i, t in enumerate(targets):
        n = len(t["labels"])
        device = t["labels"].device
        if n == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            result.append((empty, empty))
            continue
        queries = positive_idx[i].long() if positive_idx is not None else None
        if queries is None or len(queries) != n * groups:
            got = "none" if queries is None else len(queries)
            raise ValueError(
                f"DFineCriterion: dn_meta gives {got} positive denoising queries for image {i}, "
                f"expected {n} targets x {groups} groups = {n * groups}"
            )
        result.append((queries, torch.arange(n, device=device).repeat(groups)))
    return result


def repeat_targets(targets: list[dict[str, Tensor]], k: int) -> list[dict[str, Tensor]]:
    """Every target box (with its label and weight) k times, for one-to-many matching."""
    out = []
    for t in targets:
        rep = {**t, "boxes": t["boxes"].repeat(k, 1), "labels": t["labels"].repeat(k)}
        if "weights" in t:
            rep["weights"] = t["weights"].repeat(k)
        out.append(rep)
    return out


def _o2m_name(name: str) -> str:
    """``loss_mal_aux_0`` -> ``loss_mal_o2m_aux_0``: the term's kind stays first (log grouping)."""
    head, _, rest = name.removeprefix("loss_").partition("_")
    return f"loss_{head}_o2m" + (f"_{rest}" if rest else "")


def _to_device(indices: MatchIndices | None, device: torch.device) -> MatchIndices | None:
    if indices is None:
        return None
    return [(rows.to(device), cols.to(device)) for rows, cols in indices]


def _flat_index(indices: MatchIndices) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(indices)])
    return batch, torch.cat([rows for rows, _ in indices])


def _gather(targets: list[dict[str, Tensor]], indices: MatchIndices, key: str) -> Tensor:
    return torch.cat([t[key][cols] for t, (_, cols) in zip(targets, indices)])


def _mean_count_over_ranks(count: float, device: torch.device) -> float:
    total = torch.tensor([float(count)], dtype=torch.float32, device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        world = dist.get_world_size()
    return max((total / world).item(), 1.0)


def _float32(layer: dict) -> dict:
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in layer.items()}


# --------------------------------------------------------------------------- the criterion


class DFineCriterion(nn.Module):
    """Weighted D-FINE loss terms. ``outputs`` is the dict D-FINE's decoder returns in training
    (pred_logits, pred_boxes, pred_corners, ref_points, up, reg_scale, aux_outputs, pre_outputs,
    enc_aux_outputs, enc_meta, dn_outputs, dn_pre_outputs, dn_meta); see the module docstring
    for ``targets``. Returns {"loss_vfl": ..., "loss_bbox_aux_0": ..., "loss_fgl_dn_2": ...}, each
    already multiplied by its weight; their sum is the loss."""

    def __init__(
        self,
        num_classes: int,
        weights: dict[str, float] | None = None,
        alpha: float = 0.75,
        gamma: float = 2.0,
        reg_max: int = 32,
        use_mal: bool = False,
        mal_gamma: float = 1.5,
        matcher: HungarianMatcher | None = None,
        label_smoothing: float = 0.0,
        o2m_repeats: int = 0,
        o2m_weight: float = 1.0,
        enc_o2m_repeats: int = 0,
        enc_o2m_weight: float = 1.0,
        dup_weight: float = 1.0,
        dup_iou: float = 0.5,
        class_ce: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"DFineCriterion: num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"DFineCriterion: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = int(num_classes)
        self.weights = dict(DEFAULT_WEIGHTS)
        for key, value in (weights or {}).items():
            name = key.removeprefix("loss_")  # accept the official 'loss_vfl' spelling too
            if name not in DEFAULT_WEIGHTS:
                raise ValueError(f"DFineCriterion: unknown loss weight '{key}'; known: {', '.join(DEFAULT_WEIGHTS)}")
            self.weights[name] = float(value)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.reg_max = int(reg_max)
        self.use_mal = bool(use_mal)
        self.mal_gamma = float(mal_gamma)
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.label_smoothing = float(label_smoothing)
        if int(o2m_repeats) < 0 or o2m_weight < 0:
            raise ValueError(f"DFineCriterion: o2m_repeats and o2m_weight must be >= 0, got {o2m_repeats}, {o2m_weight}")
        self.o2m_repeats = int(o2m_repeats)
        self.o2m_weight = float(o2m_weight)
        if int(enc_o2m_repeats) < 0 or enc_o2m_weight < 0:
            raise ValueError(f"DFineCriterion: enc_o2m_repeats and enc_o2m_weight must be >= 0, got "
                             f"{enc_o2m_repeats}, {enc_o2m_weight}")
        self.enc_o2m_repeats = int(enc_o2m_repeats)
        self.enc_o2m_weight = float(enc_o2m_weight)
        if dup_weight < 0 or not 0 < dup_iou <= 1:
            raise ValueError(f"DFineCriterion: dup_weight must be >= 0 and dup_iou in (0, 1], got {dup_weight}, {dup_iou}")
        self.dup_weight = float(dup_weight)
        self.dup_iou = float(dup_iou)
        if class_ce < 0:
            raise ValueError(f"DFineCriterion: class_ce must be >= 0, got {class_ce}")
        # the naming term's weight; it is not an official term, so it lives outside DEFAULT_WEIGHTS
        self.weights["ce"] = float(class_ce)

    # ---- input checks

    def _check_targets(self, targets: list[dict[str, Tensor]], batch: int) -> None:
        if len(targets) != batch:
            raise ValueError(f"DFineCriterion: {len(targets)} target dicts for a batch of {batch} images")
        for i, t in enumerate(targets):
            if "labels" not in t or "boxes" not in t:
                raise ValueError(f"DFineCriterion: target {i} needs 'labels' and 'boxes', has {sorted(t)}")
            n = len(t["labels"])
            if t["labels"].dim() != 1 or t["boxes"].shape != (n, 4):
                raise ValueError(
                    f"DFineCriterion: target {i}: labels must be [N] and boxes [N, 4], got "
                    f"{tuple(t['labels'].shape)} and {tuple(t['boxes'].shape)}"
                )
            if t["labels"].is_floating_point():
                raise ValueError(f"DFineCriterion: target {i}: labels must be integers, got {t['labels'].dtype}")
            if "weights" in t and t["weights"].shape != (n,):
                raise ValueError(f"DFineCriterion: target {i}: 'weights' must have shape ({n},), got {tuple(t['weights'].shape)}")
        # value checks on the whole batch at once: one device sync, not one per image
        labels = torch.cat([t["labels"] for t in targets])
        if labels.numel() == 0:
            return
        weights = torch.cat([t.get("weights", torch.ones_like(t["labels"], dtype=torch.float32)).float() for t in targets])
        boxes = torch.cat([t["boxes"] for t in targets])
        stats = torch.stack([
            labels.min().float(), labels.max().float(),
            torch.isfinite(boxes).all().float(), (torch.isfinite(weights) & (weights >= 0)).all().float(),
        ]).tolist()
        if stats[0] < 0 or stats[1] >= self.num_classes:
            raise ValueError(
                f"DFineCriterion: target labels span {int(stats[0])}..{int(stats[1])} but num_classes="
                f"{self.num_classes}; labels must be 0-based class indices, so check the dataset's "
                f"category ids and the model's num_classes"
            )
        if not stats[2]:
            bad = [i for i, t in enumerate(targets) if not torch.isfinite(t["boxes"]).all()]
            raise ValueError(f"DFineCriterion: boxes of target(s) {bad} contain NaN or inf")
        if not stats[3]:
            raise ValueError("DFineCriterion: per-box 'weights' must be finite and >= 0")

    # ---- per-term pieces

    def _duplicate_scale(self, layer, targets, positive: Tensor) -> Tensor:
        """[B, Q, K]: dup_weight where query q is unmatched in class k yet its box overlaps a
        class-k target at IoU >= dup_iou, 1 elsewhere."""
        boxes = layer["pred_boxes"]
        duplicate = torch.zeros(positive.shape, dtype=positive.dtype, device=positive.device)
        for i, t in enumerate(targets):
            if len(t["labels"]) == 0:
                continue
            overlaps = (box_iou(cxcywh_to_xyxy(boxes[i]), cxcywh_to_xyxy(t["boxes"].to(boxes))) >= self.dup_iou).float()
            per_class = torch.zeros(positive.shape[1:], dtype=overlaps.dtype, device=overlaps.device)
            duplicate[i] = per_class.index_add_(1, t["labels"].long().to(overlaps.device), overlaps) > 0
        duplicate &= ~positive
        return torch.where(duplicate, torch.full_like(boxes[..., :1], self.dup_weight), torch.ones_like(boxes[..., :1]))

    def _classification(self, layer, targets, indices, num_boxes, num_classes, duplicates=False) -> dict[str, Tensor]:
        logits = layer["pred_logits"]
        idx = _flat_index(indices)
        labels = _gather(targets, indices, "labels").long()
        with torch.no_grad():
            quality = torch.zeros(logits.shape[:2], dtype=logits.dtype, device=logits.device)
            matched_boxes = layer["pred_boxes"][idx]
            quality[idx] = paired_box_iou(cxcywh_to_xyxy(matched_boxes), cxcywh_to_xyxy(_gather(targets, indices, "boxes")))
            positive_weight = torch.ones_like(quality)
            positive_weight[idx] = self._box_weights(targets, indices, logits)
            positive = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            positive[idx[0], idx[1], labels] = True
            class_target = positive.to(logits.dtype)
            if self.label_smoothing > 0:
                matched = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
                matched[idx] = True
                smoothed = class_target * (1 - self.label_smoothing) + self.label_smoothing / num_classes
                class_target = torch.where(matched.unsqueeze(-1), smoothed, class_target)
            negative_scale = self._duplicate_scale(layer, targets, positive) if duplicates and self.dup_weight != 1 else None
        if self.use_mal:
            terms = {"mal": matchability_aware_loss(logits, class_target, positive, quality, positive_weight,
                                                    self.mal_gamma, num_boxes, negative_scale)}
        else:
            terms = {"vfl": varifocal_loss(logits, class_target, positive, quality, positive_weight, self.alpha,
                                           self.gamma, num_boxes, negative_scale)}
        if self.weights["ce"] > 0 and num_classes > 1:
            terms["ce"] = class_cross_entropy(logits[idx], labels, positive_weight[idx], num_boxes)
        return terms

    @staticmethod
    def _box_weights(targets, indices, like: Tensor) -> Tensor:
        parts = []
        for t, (_, cols) in zip(targets, indices):
            w = t.get("weights")
            parts.append(w[cols].to(like) if w is not None else torch.ones(len(cols), dtype=like.dtype, device=like.device))
        return torch.cat(parts) if parts else like.new_zeros(0)

    def _boxes(self, layer, targets, indices, num_boxes) -> dict[str, Tensor]:
        idx = _flat_index(indices)
        target_boxes = _gather(targets, indices, "boxes").to(layer["pred_boxes"])
        l1, giou = box_regression_losses(
            layer["pred_boxes"][idx], target_boxes, self._box_weights(targets, indices, target_boxes), num_boxes
        )
        return {"bbox": l1, "giou": giou}

    def _local(self, layer, targets, indices, num_boxes, fgl_targets, ddf_balance) -> dict[str, Tensor]:
        """FGL (and DDF when the layer carries teacher corners) on the union matching."""
        idx = _flat_index(indices)
        bins = self.reg_max + 1
        target_boxes = _gather(targets, indices, "boxes").to(layer["pred_boxes"])
        with torch.no_grad():
            iou = paired_box_iou(cxcywh_to_xyxy(layer["pred_boxes"][idx]), cxcywh_to_xyxy(target_boxes))
        box_weight = self._box_weights(targets, indices, target_boxes)
        target_index, weight_right, weight_left = fgl_targets
        losses = {
            "fgl": fine_grained_localization_loss(
                layer["pred_corners"][idx].reshape(-1, bins), target_index, weight_right, weight_left,
                (iou * box_weight).repeat_interleave(4), num_boxes,
            )
        }
        teacher = layer.get("teacher_corners")
        if teacher is not None:
            pred = layer["pred_corners"]
            if pred.numel() == 0 or torch.equal(pred, teacher):  # the final layer is its own teacher
                losses["ddf"] = pred.sum() * 0
            else:
                with torch.no_grad():
                    confidence = layer["teacher_logits"].sigmoid().amax(-1)
                    confidence[idx] = iou
                    matched = torch.zeros_like(confidence, dtype=torch.bool)
                    matched[idx] = True
                losses["ddf"] = decoupled_distillation_loss(
                    pred.reshape(-1, bins), teacher.reshape(-1, bins), confidence.repeat_interleave(4, dim=-1).reshape(-1),
                    matched.repeat_interleave(4, dim=-1).reshape(-1), *ddf_balance,
                )
        return losses

    @staticmethod
    def _fgl_targets(layer, targets, indices, bins, reg_scale) -> tuple[Tensor, Tensor, Tensor]:
        idx = _flat_index(indices)
        target_xyxy = cxcywh_to_xyxy(_gather(targets, indices, "boxes").to(layer["pred_boxes"]))
        return bbox2distance(layer["ref_points"][idx].detach(), target_xyxy, bins, reg_scale)

    def _layer_terms(self, layer, targets, cls_indices, n_cls, box_indices, n_box, fgl, ddf_balance, classes,
                     duplicates=False):
        """Unweighted terms of one layer: classification on its own matching (with the duplicate
        weighting when ``duplicates``), boxes and local terms on ``box_indices`` (local only for
        layers that predict edge distributions)."""
        terms = self._classification(layer, targets, cls_indices, n_cls, classes or self.num_classes, duplicates)
        terms.update(self._boxes(layer, targets, box_indices, n_box))
        if fgl is not None and "pred_corners" in layer:
            terms.update(self._local(layer, targets, box_indices, n_box, fgl, ddf_balance))
        return terms

    # ---- forward

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        device = outputs["pred_logits"].device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._forward(outputs, targets)

    def _forward(self, outputs: dict, targets: list[dict[str, Tensor]], one_to_one: bool = True) -> dict[str, Tensor]:
        main = _float32(outputs)
        batch, device = main["pred_logits"].shape[0], main["pred_logits"].device
        self._check_targets(targets, batch)
        if "pred_corners" in main and main["pred_corners"].shape[-1] != 4 * (self.reg_max + 1):
            raise ValueError(
                f"DFineCriterion: pred_corners has {main['pred_corners'].shape[-1]} values per query, "
                f"expected 4 x (reg_max + 1) = {4 * (self.reg_max + 1)}; reg_max of model and loss differ"
            )
        targets = [{**t, "boxes": t["boxes"].float()} for t in targets]
        aux = [_float32(a) for a in outputs.get("aux_outputs", [])]
        pre = _float32(outputs["pre_outputs"]) if "pre_outputs" in outputs else None
        enc = [_float32(a) for a in outputs.get("enc_aux_outputs", [])]

        indices = self.matcher(main, targets)["indices"]
        aux_indices = [self.matcher(a, targets)["indices"] for a in aux]
        pre_indices = self.matcher(pre, targets)["indices"] if pre is not None else None
        # query selection may score proposals class-agnostically: then every target is class 0 of 1
        agnostic = bool(outputs.get("enc_meta", {}).get("class_agnostic", False))
        enc_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets] if agnostic else targets
        enc_indices = [self.matcher(a, enc_targets)["indices"] for a in enc]
        others = aux_indices + ([pre_indices] if pre is not None else []) + enc_indices
        union = union_of_matches([indices] + others) if aux else indices

        # matching ran on the CPU (the union too, so its tie order matches the reference); the
        # loss indexes device tensors with them
        indices, union, pre_indices = _to_device(indices, device), _to_device(union, device), _to_device(pre_indices, device)
        aux_indices = [_to_device(m, device) for m in aux_indices]
        enc_indices = [_to_device(m, device) for m in enc_indices]

        num_boxes = _mean_count_over_ranks(sum(len(t["labels"]) for t in targets), device)
        num_union = _mean_count_over_ranks(sum(len(r) for r, _ in union), device) if aux else num_boxes

        has_local = "pred_corners" in main
        if has_local:
            bins = weighting_function(self.reg_max, main["up"], main["reg_scale"]).detach().float()
            # every decoder layer refines around the same initial reference boxes, so the FGL
            # targets of the matched queries are computed once, from the final layer's entry
            fgl_main = self._fgl_targets(main, targets, union, bins, main["reg_scale"])
            # positives vs negatives of the union matching, on the decoder's query grid
            matched_edges = 4 * sum(len(r) for r, _ in union)
            all_edges = 4 * batch * main["pred_logits"].shape[1]
            scale = DDF_REFERENCE_BATCH / batch
            ddf_balance = ((matched_edges * scale) ** 0.5, ((all_edges - matched_edges) * scale) ** 0.5)
        else:
            bins, fgl_main, ddf_balance = None, None, None

        def add(layer, suffix, cls_indices, n_cls, box_indices, n_box, fgl=None, layer_targets=targets, classes=None,
                duplicates=False):
            terms = self._layer_terms(layer, layer_targets, cls_indices, n_cls, box_indices, n_box, fgl, ddf_balance,
                                      classes, duplicates)
            losses.update({f"loss_{name}{suffix}": value * self.weights[name] for name, value in terms.items()})

        losses: dict[str, Tensor] = {}
        add(main, "", indices, num_boxes, union, num_union, fgl_main, duplicates=one_to_one)
        for i, (layer, layer_indices) in enumerate(zip(aux, aux_indices)):
            add(layer, f"_aux_{i}", layer_indices, num_boxes, union, num_union, fgl_main, duplicates=one_to_one)
        if pre is not None:
            add(pre, "_pre", pre_indices, num_boxes, union, num_union, duplicates=one_to_one)

        for i, (layer, layer_indices) in enumerate(zip(enc, enc_indices)):
            add(layer, f"_enc_{i}", layer_indices, num_boxes, union, num_union,
                layer_targets=enc_targets, classes=1 if agnostic else None)

        if "dn_outputs" in outputs:
            dn_meta = outputs["dn_meta"]
            dn_indices = denoising_matches(dn_meta, targets)
            dn_num_boxes = num_boxes * int(dn_meta["dn_num_group"]) or 1.0
            dn_layers = [_float32(a) for a in outputs["dn_outputs"]]
            fgl_dn = None
            if has_local and dn_layers and "pred_corners" in dn_layers[0]:
                # the denoising queries share one set of reference boxes across layers, like the matched ones
                fgl_dn = self._fgl_targets(dn_layers[0], targets, dn_indices, bins, main["reg_scale"])
            for i, layer in enumerate(dn_layers):
                add(layer, f"_dn_{i}", dn_indices, dn_num_boxes, dn_indices, dn_num_boxes, fgl_dn)
            if "dn_pre_outputs" in outputs:
                add(_float32(outputs["dn_pre_outputs"]), "_dn_pre", dn_indices, dn_num_boxes, dn_indices, dn_num_boxes)
        if self.enc_o2m_repeats and "enc_dense_outputs" in outputs:
            dense = _float32(outputs["enc_dense_outputs"])
            repeated = repeat_targets(targets, self.enc_o2m_repeats)
            dense_indices = _to_device(self.matcher(dense, repeated)["indices"], device)
            n_dense = num_boxes * self.enc_o2m_repeats
            terms = self._layer_terms(dense, repeated, dense_indices, n_dense, dense_indices, n_dense, None, None, None)
            losses.update({f"loss_{name}_enc_o2m": value * self.weights[name] * self.enc_o2m_weight
                           for name, value in terms.items()})
        if self.o2m_repeats and "o2m_outputs" in outputs:
            o2m_terms = self._forward(outputs["o2m_outputs"], repeat_targets(targets, self.o2m_repeats), one_to_one=False)
            for name, value in o2m_terms.items():
                losses[_o2m_name(name)] = value * self.o2m_weight
        return losses
