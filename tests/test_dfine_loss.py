"""D-FINE matcher and loss: hand-worked values for every term, FGL targets, and the full
criterion on official-format outputs (empty images, fp16, class-agnostic proposals)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_convert

from detforge.models.dfine.box_ops import bbox2distance, cxcywh_to_xyxy, edge_distances, paired_box_iou
from detforge.models.dfine.criterion import DFineCriterion, denoising_matches, union_of_matches
from detforge.models.dfine.fdr import distance2bbox, weighting_function
from detforge.models.dfine.loss_terms import box_regression_losses, decoupled_distillation_loss, fine_grained_localization_loss
from detforge.models.dfine.matcher import HungarianMatcher

REG_MAX = 32


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def one_query_case(logits, pred_box, target_box, label=0, **target_extra):
    outputs = {"pred_logits": torch.tensor([[logits]]), "pred_boxes": torch.tensor([[pred_box]])}
    targets = [{"labels": torch.tensor([label]), "boxes": torch.tensor([target_box]), **target_extra}]
    return outputs, targets


# pred (0.5, 0.5, 0.4, 0.4) contains target (0.5, 0.5, 0.2, 0.4): IoU = 0.08 / 0.16 = 0.5 = GIoU
PRED, TARGET, IOU = [0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.4], 0.5
LOGITS = [0.5, -1.0]


# ----------------------------------------------------------------------------- matcher


def test_matcher_hand_built_assignment():
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])}]
    # query 0 sits on target 1, query 2 on target 0, query 1 far from both
    boxes = torch.tensor([[[0.71, 0.69, 0.2, 0.2], [0.1, 0.9, 0.05, 0.05], [0.3, 0.31, 0.21, 0.2]]])
    logits = torch.zeros(1, 3, 2)
    rows, cols = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)["indices"][0]
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]


def test_matcher_class_cost_breaks_a_geometric_tie():
    # two queries on the same box; only the class score tells them apart
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]])
    logits = torch.tensor([[[3.0, -3.0], [-3.0, 3.0]]])  # query 1 is confident in class 1
    rows, cols = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)["indices"][0]
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_matcher_cost_entry_by_hand():
    m = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2, alpha=0.25, gamma=2)
    cost = m.cost_matrix(torch.tensor([[0.5, -1.0]]), torch.tensor([PRED]), torch.tensor([1]), torch.tensor([TARGET]))
    p = sigmoid(-1.0)
    focal = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p**2 * -math.log(1 - p + 1e-8)
    expected = 5 * 0.2 + 2 * focal - 2 * IOU  # L1 = |0.4 - 0.2| on the width
    assert cost.item() == pytest.approx(expected, rel=1e-5)


def test_matcher_empty_images_and_topk():
    targets = [
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])},
    ]
    outputs = {"pred_logits": torch.randn(2, 6, 2), "pred_boxes": torch.rand(2, 6, 4) * 0.5 + 0.25}
    result = HungarianMatcher()(outputs, targets, return_topk=2)
    assert [len(r) for r, _ in result["indices"]] == [0, 2]
    rows, cols = result["indices_o2m"][1]
    assert len(rows) == 4 and len(set(rows.tolist())) == 4  # 2 distinct queries per target
    assert sorted(cols.tolist()) == [0, 0, 1, 1]
    assert result["indices_o2m"][0][0].numel() == 0


def test_matcher_batch_wide_costs_equal_per_image_costs(monkeypatch):
    """The GPU path (one matrix over the batch's targets, each image keeping its own columns)
    gives each image the matrix and the assignment the per-image path gives."""
    g = torch.Generator().manual_seed(0)
    counts = [2, 0, 5, 1]
    targets = [{"labels": torch.randint(0, 3, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.1}
               for n in counts]
    outputs = {"pred_logits": torch.randn(4, 30, 3, generator=g), "pred_boxes": torch.rand(4, 30, 4, generator=g) * 0.5 + 0.1}
    m = HungarianMatcher()
    per_image = m._per_image_costs(outputs["pred_logits"], outputs["pred_boxes"], targets)
    batched = m._batched_costs(outputs["pred_logits"], outputs["pred_boxes"], targets)
    assert [c.shape for c in batched] == [(30, n) for n in counts]
    for a, b in zip(per_image, batched):
        assert abs(a - b).max(initial=0) < 1e-5
    expected = m(outputs, targets, return_topk=2)
    monkeypatch.setattr(HungarianMatcher, "_batched", staticmethod(lambda logits: True))
    got = m(outputs, targets, return_topk=2)
    for key in ("indices", "indices_o2m"):
        for (r1, c1), (r2, c2) in zip(expected[key], got[key]):
            assert r1.tolist() == r2.tolist() and c1.tolist() == c2.tolist()
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 4
    assert [len(r) for r, _ in m(outputs, empty)["indices"]] == [0, 0, 0, 0]


def test_matcher_survives_nan_predictions():
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    boxes = torch.tensor([[[float("nan")] * 4, [0.5, 0.5, 0.2, 0.2]]])
    rows, _ = HungarianMatcher()({"pred_logits": torch.zeros(1, 2, 1), "pred_boxes": boxes}, targets)["indices"][0]
    assert rows.tolist() == [1]


# ----------------------------------------------------------------------------- single terms


def test_vfl_bbox_giou_one_query_by_hand():
    outputs, targets = one_query_case(LOGITS, PRED, TARGET)
    losses = DFineCriterion(num_classes=2)(outputs, targets)
    assert set(losses) == {"loss_vfl", "loss_bbox", "loss_giou"}
    p0, p1 = sigmoid(LOGITS[0]), sigmoid(LOGITS[1])
    vfl = IOU * bce(p0, IOU) + 0.75 * p1**2 * bce(p1, 0.0)  # positive: weight q, target q
    assert losses["loss_vfl"].item() == pytest.approx(vfl, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5 * 0.2, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - IOU), rel=1e-5)


def test_mal_one_query_by_hand():
    outputs, targets = one_query_case(LOGITS, PRED, TARGET)
    losses = DFineCriterion(num_classes=2, use_mal=True, mal_gamma=1.5)(outputs, targets)
    assert "loss_mal" in losses and "loss_vfl" not in losses
    p0, p1 = sigmoid(LOGITS[0]), sigmoid(LOGITS[1])
    mal = bce(p0, IOU**1.5) + p1**1.5 * bce(p1, 0.0)  # positive: weight 1, target q^gamma
    assert losses["loss_mal"].item() == pytest.approx(mal, rel=1e-5)


def test_mal_gamma_and_cls_weight_keys_by_hand():
    """``mal_gamma=1 cls_weight=2`` from the training config reach the criterion: the positive
    target becomes IoU itself, the negative's weight p, and the whole term is doubled."""
    from detforge.config import build_config
    from detforge.models.dfine import DFine
    from detforge.models.zoo import get_spec

    options = get_spec("dfine-n").options(build_config({"model": "dfine-n", "mal_gamma": 1.0, "cls_weight": 2.0}))
    criterion = DFine("n", 2, **options).criterion()
    outputs, targets = one_query_case(LOGITS, PRED, TARGET)
    losses = criterion(outputs, targets)
    p0, p1 = sigmoid(LOGITS[0]), sigmoid(LOGITS[1])
    assert losses["loss_mal"].item() == pytest.approx(2 * (bce(p0, IOU) + p1 * bce(p1, 0.0)), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5 * 0.2, rel=1e-5)  # box terms keep their weights
    # the weight follows the term in use: VFL when MAL is off
    vfl_options = get_spec("dfine-n").options(build_config({"model": "dfine-n", "mal": False, "cls_weight": 2.0}))
    vfl = DFine("n", 2, **vfl_options).criterion()(outputs, targets)["loss_vfl"].item()
    assert vfl == pytest.approx(2 * (IOU * bce(p0, IOU) + 0.75 * p1**2 * bce(p1, 0.0)), rel=1e-5)


def test_label_smoothing_by_hand():
    outputs, targets = one_query_case(LOGITS, PRED, TARGET)
    losses = DFineCriterion(num_classes=2, label_smoothing=0.2)(outputs, targets)
    p0, p1 = sigmoid(LOGITS[0]), sigmoid(LOGITS[1])
    t0, t1 = IOU * (0.8 + 0.1), IOU * 0.1  # (1 - e) * one_hot + e / K, scaled by IoU
    vfl = t0 * bce(p0, t0) + 0.75 * p1**2 * bce(p1, t1)
    assert losses["loss_vfl"].item() == pytest.approx(vfl, rel=1e-5)


def test_per_box_weights_scale_positive_terms():
    outputs, targets = one_query_case(LOGITS, PRED, TARGET, weights=torch.tensor([0.5]))
    losses = DFineCriterion(num_classes=2)(outputs, targets)
    p0, p1 = sigmoid(LOGITS[0]), sigmoid(LOGITS[1])
    vfl = 0.5 * IOU * bce(p0, IOU) + 0.75 * p1**2 * bce(p1, 0.0)  # the negative part keeps weight 1
    assert losses["loss_vfl"].item() == pytest.approx(vfl, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.5 * 5 * 0.2, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(0.5 * 2 * (1 - IOU), rel=1e-5)


def test_giou_and_l1_on_disjoint_pair_by_hand():
    # xyxy [0.1,0.1,0.3,0.3] vs [0.5,0.1,0.7,0.3]: IoU 0, union 0.08, hull 0.12 -> GIoU -1/3
    pred, target = torch.tensor([[0.2, 0.2, 0.2, 0.2]]), torch.tensor([[0.6, 0.2, 0.2, 0.2]])
    l1, giou = box_regression_losses(pred, target, torch.ones(1), num_boxes=2.0)
    assert l1.item() == pytest.approx(0.4 / 2, rel=1e-5)
    assert giou.item() == pytest.approx((1 + 1 / 3) / 2, rel=1e-5)


def test_fgl_one_edge_by_hand():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    # true offset 30% of the way from bin 0 to bin 1
    loss = fine_grained_localization_loss(logits, torch.tensor([0.3]), torch.tensor([0.3]), torch.tensor([0.7]),
                                          edge_weight=torch.tensor([0.8]), num_boxes=2.0)
    log_z = math.log(math.e + 1 + math.exp(-1))
    expected = 0.8 * (0.7 * (log_z - 1.0) + 0.3 * (log_z - 0.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ddf_balances_matched_and_unmatched_edges_by_hand():
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    T = 5.0

    def kl(s, t):  # KL(softmax(t / T) || softmax(s / T)) for two bins
        ps = [math.exp(v / T) / sum(math.exp(u / T) for u in s) for v in s]
        pt = [math.exp(v / T) / sum(math.exp(u / T) for u in t) for v in t]
        return sum(b * math.log(b / a) for a, b in zip(ps, pt))

    loss = decoupled_distillation_loss(student, teacher, edge_weight=torch.tensor([0.9, 0.4]),
                                       positive=torch.tensor([True, False]), num_pos=1.0, num_neg=3.0)
    pos = 0.9 * T**2 * kl([0, 0], [1, 0])
    neg = 0.4 * T**2 * kl([1, 0], [0, 0])
    assert loss.item() == pytest.approx((pos * 1 + neg * 3) / 4, rel=1e-5)


def test_paired_iou_of_empty_boxes_is_zero_not_nan():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert paired_box_iou(point, point).item() == 0.0
    # negative widths are clamped to empty boxes, never inverted ones
    assert torch.allclose(cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, -0.2, 0.1]])), torch.tensor([[0.5, 0.45, 0.5, 0.55]]))


# ----------------------------------------------------------------------------- FGL targets


def test_bbox2distance_inverts_distance2bbox():
    gen = torch.Generator().manual_seed(0)
    up, reg_scale = torch.tensor([0.5]), torch.tensor([4.0])
    bins = weighting_function(REG_MAX, up, reg_scale)
    points = torch.cat([0.3 + 0.4 * torch.rand(50, 2, generator=gen), 0.05 + 0.3 * torch.rand(50, 2, generator=gen)], 1)
    # offsets strictly inside the bin range, so they are representable; offsets below
    # -reg_scale / 2 invert the box, so convert without clamping
    distance = bins[0] + 0.001 + (bins[-1] - bins[0] - 0.002) * torch.rand(50, 4, generator=gen)
    boxes = box_convert(distance2bbox(points, distance, reg_scale), "cxcywh", "xyxy")
    assert torch.allclose(edge_distances(points, boxes, reg_scale), distance, atol=1e-4)
    index, weight_right, weight_left = bbox2distance(points, boxes, bins, reg_scale)
    left = index.long()
    decoded = bins[left] * weight_left + bins[left + 1] * weight_right
    assert torch.allclose(decoded, distance.reshape(-1), atol=1e-4)
    assert torch.allclose(weight_left + weight_right, torch.ones_like(weight_left))


def test_bbox2distance_out_of_range_offsets_go_to_end_bins():
    up, reg_scale = torch.tensor([0.5]), torch.tensor([4.0])
    bins = weighting_function(REG_MAX, up, reg_scale)
    points = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    distance = torch.tensor([[bins[0].item() - 1, bins[-1].item() + 1, 0.0, bins[-1].item()]])
    boxes = box_convert(distance2bbox(points, distance, reg_scale), "cxcywh", "xyxy")
    index, weight_right, weight_left = bbox2distance(points, boxes, bins, reg_scale)
    assert index[0].item() == 0 and weight_left[0].item() == 1  # below W(0): all on bin 0
    assert index[1].item() == pytest.approx(REG_MAX - 0.1) and weight_right[1].item() == 1  # beyond: last bin
    # W(16) = 0 exactly (up to float32 round trip through box corners)
    assert index[2].item() == REG_MAX // 2 and weight_left[2].item() == pytest.approx(1.0, abs=1e-4)
    assert weight_right[3].item() == pytest.approx(1.0, abs=1e-4)  # at W(reg_max)


# ----------------------------------------------------------------------------- matching helpers


def test_union_of_matches_keeps_most_frequent_target_per_query():
    def m(rows, cols):
        return [(torch.tensor(rows), torch.tensor(cols))]

    rows, cols = union_of_matches([m([0, 1], [0, 1]), m([0, 2], [0, 1]), m([1, 0], [1, 2]), m([1], [0])])[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 0, 1: 1, 2: 1}
    assert rows.tolist()[0] in (0, 1)  # a pair seen twice comes before the single ones
    empty = union_of_matches([m([], []), m([], [])])[0]
    assert empty[0].numel() == 0


def test_denoising_matches_follow_group_layout():
    targets = [{"labels": torch.tensor([2, 0])}, {"labels": torch.zeros(0, dtype=torch.long)}]
    meta = {"dn_positive_idx": (torch.tensor([0, 1, 4, 5]), torch.zeros(0, dtype=torch.long)), "dn_num_group": 2}
    (rows0, cols0), (rows1, _) = denoising_matches(meta, targets)
    assert rows0.tolist() == [0, 1, 4, 5] and cols0.tolist() == [0, 1, 0, 1] and rows1.numel() == 0
    with pytest.raises(ValueError, match="expected 2 targets x 3 groups"):
        denoising_matches({**meta, "dn_num_group": 3}, targets)


# ----------------------------------------------------------------------------- full criterion


def make_outputs(num_gts, queries=10, classes=3, layers=3, seed=0, dtype=torch.float32, agnostic=False, num_dn=12):
    """Random outputs in the layout D-FINE's decoder returns in training, plus targets."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(num_gts)

    def boxes(*shape):
        wh = 0.05 + 0.3 * torch.rand(*shape, 2, generator=gen)
        return torch.cat([wh / 2 + (1 - wh) * torch.rand(*shape, 2, generator=gen), wh], -1)

    def leaf(x):
        return x.to(dtype).requires_grad_(True)

    def group(q, with_corners=True):
        ref = boxes(batch, q)
        out = []
        for _ in range(layers):
            layer = {"pred_logits": leaf(torch.randn(batch, q, classes, generator=gen)), "pred_boxes": leaf(boxes(batch, q))}
            if with_corners:
                layer["pred_corners"] = leaf(torch.randn(batch, q, 4 * (REG_MAX + 1), generator=gen))
                layer["ref_points"] = ref.to(dtype)
            out.append(layer)
        for layer in out:
            layer["teacher_corners"], layer["teacher_logits"] = out[-1]["pred_corners"], out[-1]["pred_logits"]
        return out

    targets = [{"labels": torch.randint(0, classes, (n,), generator=gen), "boxes": boxes(n)} for n in num_gts]
    max_gt = max(num_gts)
    groups = max(num_dn // max_gt, 1) if max_gt else 0
    dec, dn = group(queries), group(2 * max_gt * groups)
    outputs = {k: v for k, v in dec[-1].items() if not k.startswith("teacher")}
    outputs.update(up=torch.tensor([0.5]), reg_scale=torch.tensor([4.0]), aux_outputs=dec[:-1])
    outputs["pre_outputs"] = {"pred_logits": leaf(torch.randn(batch, queries, classes, generator=gen)), "pred_boxes": leaf(boxes(batch, queries))}
    enc_classes = 1 if agnostic else classes
    outputs["enc_aux_outputs"] = [{"pred_logits": leaf(torch.randn(batch, queries, enc_classes, generator=gen)),
                                   "pred_boxes": leaf(boxes(batch, queries))}]
    outputs["enc_meta"] = {"class_agnostic": agnostic}
    outputs["dn_outputs"] = dn
    outputs["dn_pre_outputs"] = {"pred_logits": leaf(torch.randn(batch, len(dn[0]["pred_logits"][0]), classes, generator=gen)),
                                 "pred_boxes": leaf(boxes(batch, len(dn[0]["pred_logits"][0])))}
    positive = tuple(torch.cat([g * 2 * max_gt + torch.arange(n) for g in range(groups)]).long() for n in num_gts) if max_gt else None
    outputs["dn_meta"] = {"dn_positive_idx": positive, "dn_num_group": groups, "dn_num_split": [2 * max_gt * groups, queries]}
    return outputs, targets


def expected_keys(layers=3):
    keys = {"loss_vfl", "loss_bbox", "loss_giou", "loss_fgl"}
    for i in range(layers - 1):
        keys |= {f"loss_{n}_aux_{i}" for n in ("vfl", "bbox", "giou", "fgl", "ddf")}
    for i in range(layers):
        keys |= {f"loss_{n}_dn_{i}" for n in ("vfl", "bbox", "giou", "fgl", "ddf")}
    for suffix in ("_pre", "_enc_0", "_dn_pre"):
        keys |= {f"loss_{n}{suffix}" for n in ("vfl", "bbox", "giou")}
    return keys


@pytest.mark.parametrize("num_gts", [[3, 5], [0, 4], [0, 0]], ids=["boxes", "one-empty", "all-empty"])
def test_full_criterion_keys_finite_and_gradients(num_gts):
    outputs, targets = make_outputs(num_gts)
    losses = DFineCriterion(num_classes=3)(outputs, targets)
    assert set(losses) == expected_keys()
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    grads = {k: outputs[k].grad for k in ("pred_logits", "pred_boxes", "pred_corners")}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["pred_logits"].abs().sum() > 0
    assert outputs["aux_outputs"][0]["pred_logits"].grad.abs().sum() > 0
    if sum(num_gts):
        assert grads["pred_boxes"].abs().sum() > 0 and grads["pred_corners"].abs().sum() > 0
        assert outputs["aux_outputs"][0]["pred_corners"].grad.abs().sum() > 0  # DDF reaches earlier layers
        assert losses["loss_ddf_aux_0"] > 0 and losses["loss_ddf_dn_2"] == 0  # the last layer is its own teacher
    else:
        assert losses["loss_bbox"] == 0 and losses["loss_fgl"] == 0


def test_full_criterion_fp16_outputs_degenerate_boxes_and_agnostic_proposals():
    outputs, targets = make_outputs([2, 3], dtype=torch.float16, agnostic=True, seed=1)
    with torch.no_grad():
        outputs["pred_boxes"][0, :3, 2:] = 0.0  # zero-size predictions
        outputs["pred_boxes"][1, :3, 2] = -0.1  # inverted width
    targets[0]["boxes"][0, 2:] = 0.0  # a point-sized target
    losses = DFineCriterion(num_classes=3, use_mal=True)(outputs, targets)
    assert "loss_mal_enc_0" in losses
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(outputs["pred_boxes"].grad).all() and outputs["pred_boxes"].grad.dtype == torch.float16


def test_criterion_without_denoising_outputs():
    outputs, targets = make_outputs([2, 2])
    for key in ("dn_outputs", "dn_pre_outputs", "dn_meta"):
        del outputs[key]
    losses = DFineCriterion(num_classes=3)(outputs, targets)
    assert set(losses) == {k for k in expected_keys() if "_dn" not in k}


def test_denoising_losses_are_normalised_per_group():
    # G identical denoising groups must give the same losses as one: sums grow G-fold, and so
    # does the normaliser num_boxes * dn_num_group
    outputs, targets = make_outputs([2], layers=2, seed=3)
    gen = torch.Generator().manual_seed(4)
    one_group = {
        "pred_logits": torch.randn(1, 4, 3, generator=gen), "pred_boxes": 0.2 + 0.5 * torch.rand(1, 4, 4, generator=gen),
        "pred_corners": torch.randn(1, 4, 4 * (REG_MAX + 1), generator=gen), "ref_points": 0.2 + 0.5 * torch.rand(1, 4, 4, generator=gen),
    }
    teacher_corners = torch.randn(1, 4, 4 * (REG_MAX + 1), generator=gen)
    teacher_logits = torch.randn(1, 4, 3, generator=gen)

    def dn_losses(groups):
        tile = {k: v.repeat(1, groups, 1) for k, v in one_group.items()}
        tile.update(teacher_corners=teacher_corners.repeat(1, groups, 1), teacher_logits=teacher_logits.repeat(1, groups, 1))
        meta = {"dn_positive_idx": (torch.cat([torch.arange(2) + 4 * g for g in range(groups)]),), "dn_num_group": groups}
        out = {**outputs, "dn_outputs": [tile], "dn_meta": meta}
        del out["dn_pre_outputs"]
        return {k: v for k, v in DFineCriterion(num_classes=3)(out, targets).items() if "_dn_" in k}

    one, three = dn_losses(1), dn_losses(3)
    assert set(one) == {f"loss_{n}_dn_0" for n in ("vfl", "bbox", "giou", "fgl", "ddf")}
    for key in one:
        assert three[key].item() == pytest.approx(one[key].item(), rel=1e-5), key


def test_bad_inputs_have_clear_messages():
    outputs, targets = one_query_case(LOGITS, PRED, TARGET, label=2)
    with pytest.raises(ValueError, match="labels span 2..2 but num_classes=2"):
        DFineCriterion(num_classes=2)(outputs, targets)
    with pytest.raises(ValueError, match="unknown loss weight 'loss_cls'"):
        DFineCriterion(num_classes=2, weights={"loss_cls": 1.0})
    outputs, targets = one_query_case(LOGITS, PRED, [float("nan")] * 4)
    with pytest.raises(ValueError, match="target\\(s\\) \\[0\\] contain NaN"):
        DFineCriterion(num_classes=2)(outputs, targets)
    with pytest.raises(ValueError, match="1 target dicts for a batch of 2"):
        DFineCriterion(num_classes=2)({"pred_logits": torch.zeros(2, 1, 2), "pred_boxes": torch.rand(2, 1, 4)}, targets)


def test_weights_override_accepts_official_names():
    outputs, targets = one_query_case(LOGITS, PRED, TARGET)
    losses = DFineCriterion(num_classes=2, weights={"loss_bbox": 1.0, "giou": 0.0})(outputs, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.2, rel=1e-5)
    assert losses["loss_giou"].item() == 0.0


def test_duplicate_weight_by_hand():
    """``dup_weight=3``: an unmatched query overlapping the target at IoU >= 0.5 (a duplicate)
    gets three times its negative weight in the target's class only; a far query, the other
    class and the matched query keep theirs. MAL with exponent 1: negatives weigh p."""
    from detforge.config import build_config
    from detforge.models.dfine import DFine
    from detforge.models.zoo import get_spec

    target = [0.5, 0.5, 0.4, 0.4]
    # query 0 exact (matched), query 1 shifted by 0.05 (IoU 0.35 * 0.4 / (0.32 - 0.14) = 0.778),
    # query 2 far away (IoU 0)
    boxes = torch.tensor([[target, [0.55, 0.5, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1]]])
    logits = torch.tensor([[[2.0, -1.0], [1.0, 0.5], [0.0, -2.0]]])
    outputs = {"pred_logits": logits, "pred_boxes": boxes}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([target])}]
    p = [[sigmoid(v) for v in row] for row in logits[0].tolist()]

    def expected(w):
        negatives = p[0][1] * bce(p[0][1], 0) + p[2][0] * bce(p[2][0], 0) + p[2][1] * bce(p[2][1], 0)
        negatives += p[1][1] * bce(p[1][1], 0) + w * p[1][0] * bce(p[1][0], 0)
        return bce(p[0][0], 1.0) + negatives

    options = get_spec("dfine-n").options(build_config({"model": "dfine-n", "mal_gamma": 1.0, "dup_weight": 3.0}))
    assert options["loss_options"]["dup_weight"] == 3.0
    losses = DFine("n", 2, **options).criterion()(outputs, targets)
    assert losses["loss_mal"].item() == pytest.approx(expected(3.0), rel=1e-5)
    plain = DFineCriterion(num_classes=2, use_mal=True, mal_gamma=1.0)(outputs, targets)
    assert plain["loss_mal"].item() == pytest.approx(expected(1.0), rel=1e-5)
    # the IoU bar: at dup_iou 0.8 the shifted query (0.778) is no longer a duplicate
    strict = DFineCriterion(num_classes=2, use_mal=True, mal_gamma=1.0, dup_weight=3.0, dup_iou=0.8)(outputs, targets)
    assert strict["loss_mal"].item() == pytest.approx(expected(1.0), rel=1e-5)
    # VFL takes the same factor on its negatives (alpha * p**2)
    vfl = DFineCriterion(num_classes=2, dup_weight=3.0)(outputs, targets)["loss_vfl"].item()
    vfl_plain = DFineCriterion(num_classes=2)(outputs, targets)["loss_vfl"].item()
    assert vfl - vfl_plain == pytest.approx(2 * 0.75 * p[1][0] ** 2 * bce(p[1][0], 0), rel=1e-5)


def test_class_cross_entropy_by_hand():
    """``class_ce=w``: w times a softmax cross-entropy over the classes of the matched query,
    per box weight, over num_boxes; the MAL term is untouched and a 1-class criterion has none."""
    from detforge.config import build_config
    from detforge.models.dfine import DFine
    from detforge.models.dfine.loss_terms import class_cross_entropy
    from detforge.models.zoo import get_spec

    # two matched queries: logits (2, 0, -1) of class 0 and (0, 1, 0) of class 2; weights 1 and 0.5
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))  # 0.1698
    ce1 = -math.log(1 / (2 + math.e))  # 1.5514
    got = class_cross_entropy(logits, torch.tensor([0, 2]), torch.tensor([1.0, 0.5]), 2.0)
    assert got.item() == pytest.approx((ce0 + 0.5 * ce1) / 2, rel=1e-6)
    assert class_cross_entropy(logits[:0], torch.tensor([], dtype=torch.long), torch.ones(0), 1.0).item() == 0.0

    outputs, targets = one_query_case([2.0, 0.0, -1.0], PRED, TARGET)
    options = get_spec("dfine-n").options(build_config({"model": "dfine-n", "class_ce": 1.5, "cls_weight": 2.0}))
    assert options["loss_options"]["class_ce"] == 1.5
    losses = DFine("n", 3, **options).criterion()(outputs, targets)
    assert losses["loss_ce"].item() == pytest.approx(1.5 * ce0, rel=1e-5)
    plain = DFineCriterion(num_classes=3, use_mal=True, weights={"mal": 2.0})(outputs, targets)
    assert "loss_ce" not in plain
    assert losses["loss_mal"].item() == pytest.approx(plain["loss_mal"].item(), rel=1e-6)
    # one class: the cross-entropy is 0 whatever the logit, so the term is left out
    outputs, targets = one_query_case([2.0], PRED, TARGET)
    assert "loss_ce" not in DFineCriterion(num_classes=1, use_mal=True, class_ce=1.0)(outputs, targets)
    with pytest.raises(ValueError, match="class_ce must be >= 0"):
        DFineCriterion(num_classes=3, class_ce=-1.0)


def test_class_cross_entropy_on_every_classified_layer():
    """Every layer with a class term gets its ce term (decoder, auxiliary, first-layer head,
    encoder and denoising), except class-agnostic proposals."""
    outputs, targets = make_outputs([3, 5])
    losses = DFineCriterion(num_classes=3, class_ce=1.0)(outputs, targets)
    ce_keys = {k for k in losses if k.startswith("loss_ce")}
    assert ce_keys == {k.replace("loss_vfl", "loss_ce") for k in expected_keys() if k.startswith("loss_vfl")}
    assert set(losses) - ce_keys == expected_keys()
    assert all(losses[k] > 0 for k in ce_keys)
    outputs, targets = make_outputs([3, 5], agnostic=True)
    assert "loss_ce_enc_0" not in DFineCriterion(num_classes=3, class_ce=1.0)(outputs, targets)
