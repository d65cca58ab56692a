"""Instance outlines follow the pixels through every augmentation, checked on pixels: each
object is painted in its own colour from its outline; after a transform the rasterised moved
outline must hold that colour (>= 95% of its pixels) and hold the object (>= 95% of the pixels
of that colour), and the box must be the outline's bounds. Plus the outline geometry itself
(clipping, cutout holes, rasterising against COCO's, tracing masks) against hand-worked cases."""

from __future__ import annotations

import math

import faster_coco_eval.core.mask as coco_mask
import numpy as np
import pytest
import torch

from detforge.config import TrainConfig
from detforge.data.augment import (
    Targets,
    TrainTransform,
    cutout,
    flip_lr,
    flip_ud,
    letterbox,
    mixup_geometry,
    mixup_overlay,
    mosaic4,
    rotate90,
    stretch,
    warp_image,
    warp_targets,
)
from detforge.data.augment.geometric import scaling, translation
from detforge.data.loader import resize_batch
from detforge.data.polygons import (
    box_ring,
    clip_ring,
    join_outline,
    join_rings,
    mask_to_rings,
    masks_to_original,
    outline_area,
    rasterize,
    rasterize_objects,
    ring_self_crosses,
    subtract_rect,
)

BG = (60, 60, 60)
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]
MIN_SHARE = 0.95  # the pixel checks' threshold (edges are interpolated by the warps)


def star(cx, cy, r_out, r_in, points=5, turn=0.0):
    a = np.radians(np.arange(2 * points) * 180 / points + turn)
    r = np.where(np.arange(2 * points) % 2 == 0, r_out, r_in)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def ellipse(cx, cy, rx, ry, n=48):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def painted_scene(h=120, w=160):
    """Three objects (a concave star, an ellipse, a triangle in two parts) in their colours."""
    outlines = [
        [star(45, 45, 32, 14)],
        [ellipse(110, 70, 35, 22)],
        [np.array([[20.3, 85.0], [60.7, 88.2], [35.5, 115.4]]), np.array([[140.0, 8.0], [155.0, 8.0], [150.0, 30.0]])],
    ]
    img = np.full((h, w, 3), BG, np.uint8)
    for rings, colour in zip(outlines, COLOURS):
        img[rasterize(rings, h, w)] = colour
    boxes = [np.concatenate(r).min(0).tolist() + np.concatenate(r).max(0).tolist() for r in outlines]
    return img, Targets.from_boxes(boxes, [0, 1, 2], outlines)


def colour_mask(img, colour):
    """Pixels nearer to ``colour`` than to the background, the padding or another object's
    colour: at an interpolated edge, pixels that are more than half the object."""
    palette = np.array([BG, (114, 114, 114), (0, 0, 0), *COLOURS], np.float64)
    nearest = np.argmin(((img[..., None, :].astype(np.float64) - palette) ** 2).sum(-1), -1)
    return nearest == 3 + COLOURS.index(tuple(colour))


def mask_shares(img, targets, label):
    """(share of the object's rasterised outline that shows its colour, share of the pixels of
    that colour that the outline covers) for the object with ``label``."""
    i = int(np.flatnonzero(targets.labels == label)[0])
    m = rasterize(targets.polygons[i], *img.shape[:2])
    colour = colour_mask(img, COLOURS[label])
    return colour[m].mean(), m[colour].mean()


def assert_outlines_on_objects(img, targets, labels=None):
    labels = targets.labels.tolist() if labels is None else labels
    assert sorted(targets.labels.tolist()) == sorted(labels)
    for label in labels:
        inside, covered = mask_shares(img, targets, label)
        assert inside >= MIN_SHARE and covered >= MIN_SHARE, (label, inside, covered)
    for box, rings in zip(targets.boxes, targets.polygons):
        pts = np.concatenate(rings)
        np.testing.assert_allclose(box, [*pts.min(0), *pts.max(0)], atol=1e-3)


# ---- the outline geometry ---------------------------------------------------------------------
def test_rasterize_is_the_pixel_centre_rule_and_close_to_coco():
    # a box [2.2, 7.8]: pixel centres 2.5 .. 7.5 inside -> pixels 2..7; [0, 10] -> 0..9
    np.testing.assert_array_equal(np.nonzero(rasterize([box_ring([2.2, 2.2, 7.8, 7.8])], 10, 10).any(0))[0],
                                  np.arange(2, 8))
    assert rasterize([box_ring([0, 0, 10, 10])], 10, 10).all()
    # random star-shaped polygons against COCO's own rasteriser (which upsamples by 5 and
    # rounds): the same masks up to a share of the boundary pixels
    rng = np.random.default_rng(0)
    ours = coco = differ = 0
    for _ in range(60):
        n = rng.integers(3, 30)
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(3, 40, n)
        c = rng.uniform(0, 100, 2)
        ring = np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], 1)
        a = rasterize([ring], 100, 120)
        b = coco_mask.decode(coco_mask.frPyObjects([ring.ravel().tolist()], 100, 120)[0]).astype(bool)
        ours, coco, differ = ours + a.sum(), coco + b.sum(), differ + (a != b).sum()
    assert differ / coco < 0.02 and abs(ours - coco) / coco < 0.01


def test_even_odd_inside_a_ring_union_across_rings():
    outer, hole = box_ring([0, 0, 10, 10]), box_ring([3, 3, 6, 6])
    one = rasterize([join_rings(outer, hole, opposite=True)], 10, 10)
    assert one.sum() == 100 - 9 and not one[4, 4]
    assert rasterize([outer, hole], 10, 10).sum() == 100  # two rings: union


def test_clip_is_exact_for_a_concave_ring():
    s = star(20, 20, 15, 6)
    clipped = clip_ring(s, (0, 0, 20, 40))  # the left half
    full = rasterize([s], 40, 40)
    half = full.copy()
    half[:, 20:] = False
    np.testing.assert_array_equal(rasterize([clipped], 40, 40), half)
    assert clip_ring(s, (50, 50, 60, 60)) is None


def test_subtract_rect_removes_exactly_the_hole():
    s = star(20, 20, 15, 6)
    before = rasterize([s], 40, 40)
    rings = subtract_rect([s], (15, 10, 25, 30))
    expected = before.copy()
    expected[10:30, 15:25] = False
    np.testing.assert_array_equal(rasterize(rings, 40, 40), expected)
    sq = box_ring([10, 10, 30, 30])
    assert outline_area(subtract_rect([sq], (15, 15, 20, 40))) == pytest.approx(400 - 5 * 15)
    assert subtract_rect([sq], (0, 0, 40, 40)) == []


def test_mask_traced_to_rings_rasterises_back_exactly():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = rng.random((30, 40)) < 0.5  # speckle: holes, diagonal contacts, single pixels
        np.testing.assert_array_equal(rasterize(mask_to_rings(m), 30, 40), m)
    m = np.zeros((20, 20), bool)
    m[2:18, 2:18] = True
    m[6:10, 6:10] = False
    rings = mask_to_rings(m)
    assert len(rings) == 1  # the hole joined to its outer ring
    assert outline_area(rings) == pytest.approx(16 * 16 - 16, abs=0.5 * (64 + 16))  # a quarter pixel in


def test_joined_rings_cover_the_same_pixels_and_do_not_count_as_crossing():
    parts = [box_ring([1, 1, 6, 6]), box_ring([10, 10, 15, 14]), star(25, 8, 6, 3)]
    joined = join_outline(parts)
    np.testing.assert_array_equal(rasterize([joined], 20, 32), rasterize(parts, 20, 32))
    assert not ring_self_crosses(joined)
    assert ring_self_crosses(np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float))  # a bow tie


# ---- every transform, on pixels ------------------------------------------------------------
def test_flips_and_rot90_move_outlines_with_the_pixels():
    img, t = painted_scene()
    for out, moved in (flip_lr(img, t), flip_ud(img, t), *(rotate90(img, t, k) for k in (1, 2, 3))):
        assert_outlines_on_objects(out, moved)
        # exact maps: the rasterised outline is the object's pixels, but for a pixel centre
        # lying exactly on an edge (half-open rule: a mirror image takes it on the other side)
        for label in range(3):
            assert min(mask_shares(out, moved, label)) >= 0.99


@pytest.mark.parametrize("degrees,shear,scale,shift", [(0, 0, 0.7, (5, -3)), (30, 0, 1.0, (0, 0)),
                                                       (0, 15, 1.0, (8, 4)), (20, 10, 1.3, (-6, 7))],
                         ids=["scale-translate", "rotate", "shear", "all"])
def test_affine_outlines_follow_the_pixels_and_boxes_tighten(degrees, shear, scale, shift):
    img, t = painted_scene()
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(shear))
    m = translation(100 + shift[0], 100 + shift[1]) @ sh @ rot @ scaling(scale, scale) @ translation(-80, -60)
    out = warp_image(img, m, 200)
    moved = warp_targets(t, m, 200, 200, min_size=2, min_visibility=0.1)
    assert_outlines_on_objects(out, moved)
    # the outline's bounds are never looser than the moved box's corners
    corners = warp_targets(t.with_polygons(None), m, 200, 200, min_size=2, min_visibility=0.1)
    assert (moved.boxes[:, :2] >= corners.boxes[:, :2] - 1e-3).all()
    assert (moved.boxes[:, 2:] <= corners.boxes[:, 2:] + 1e-3).all()
    if degrees:
        assert (moved.boxes[:, 2:] - moved.boxes[:, :2]).prod(1).sum() < (
            corners.boxes[:, 2:] - corners.boxes[:, :2]).prod(1).sum()


def test_objects_whose_outline_leaves_the_image_are_dropped_with_their_box():
    img, t = painted_scene()
    m = translation(-100, 0)  # the star and the triangle's first part leave; the ellipse is cut
    moved = warp_targets(t, m, 160, 120, min_size=2, min_visibility=0.1)
    assert moved.labels.tolist() == [1, 2]
    assert len(moved.polygons[1]) == 1  # the triangle's second part is all that is left
    assert moved.boxes[0, 0] == 0.0 and moved.boxes[0, 2] == pytest.approx(45)
    assert_outlines_on_objects(warp_image(img, m, 160)[:120], moved)


@pytest.mark.parametrize("rotate", [False, True], ids=["scale-shift", "rotated"])
@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_mosaic_outlines_follow_each_tile(mode, rotate):
    img, t = painted_scene()
    tiles = [(img, t), (np.ascontiguousarray(img[:, ::-1]), flip_lr(img, t)[1]),
             (np.ascontiguousarray(img[::-1]), flip_ud(img, t)[1]), (img, t)]
    s = 200
    a = math.radians(12 if rotate else 0)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    affine = translation(100.3, 99.6) @ rot @ scaling(0.8, 0.8) @ translation(-s, -s)
    # nothing dropped for visibility here, so every painted pixel must be under an outline
    out, moved = mosaic4(tiles, s, (210, 190), affine, mode, min_size=0, min_visibility=0.0)
    assert len(moved) >= 4
    masks = rasterize_objects(moved.polygons, s, s).astype(bool)
    for m, label, box, rings in zip(masks, moved.labels, moved.boxes, moved.polygons):
        colour = colour_mask(out, COLOURS[label])
        if m.sum() >= 100:  # a sliver at a tile edge is mostly interpolated border
            assert colour[m].mean() >= MIN_SHARE, (label, colour[m].mean())
        pts = np.concatenate(rings)
        np.testing.assert_allclose(box, [*pts.min(0), *pts.max(0)], atol=1e-3)
    for label in range(3):  # every pixel of an object's colour is under one of its outlines
        colour = colour_mask(out, COLOURS[label])
        assert masks[moved.labels == label].any(0)[colour].mean() >= MIN_SHARE


@pytest.mark.parametrize("resize", [letterbox, stretch])
def test_letterbox_and_stretch_outlines(resize):
    img, t = painted_scene()
    out, moved, *_ = resize(img, t, 96)
    assert_outlines_on_objects(out, moved)


def test_cutout_makes_holes_in_the_masks():
    img, t = painted_scene()
    rects = [(30, 30, 50, 50), (82, 40, 160, 120)]  # into the star; all but a sliver of the ellipse
    left = rasterize(t.polygons[1], 120, 160)[:, :82].sum() / rasterize(t.polygons[1], 120, 160).sum()
    assert 0 < left < 0.2
    out, kept = cutout(img, t, rects, fill=0, min_visibility=0.2)
    assert kept.labels.tolist() == [0, 2]  # the ellipse keeps under 20% and is dropped
    star_mask = rasterize(kept.polygons[0], 120, 160)
    expected = rasterize(t.polygons[0], 120, 160)
    expected[30:50, 30:50] = False
    np.testing.assert_array_equal(star_mask, expected)  # exactly the hidden pixels removed
    assert_outlines_on_objects(out, kept)
    # an object hidden entirely goes, box and all
    _, none_left = cutout(img, t, [(0, 0, 160, 120)], fill=0, min_visibility=0.0)
    assert len(none_left) == 0


def test_mixup_keeps_outlines_where_they_were():
    img, t = painted_scene()
    other, ot = painted_scene()
    out, mixed = mixup_overlay(img, t, np.ascontiguousarray(other[::-1]), flip_ud(other, ot)[1], 0.5)
    assert len(mixed) == 6
    before = rasterize_objects(t.polygons + flip_ud(other, ot)[1].polygons, 120, 160)
    np.testing.assert_array_equal(rasterize_objects(mixed.polygons, 120, 160), before)
    out, mixed = mixup_geometry(img, t, other[:60], ot.select(np.array([False, False, True])), 0.6)
    assert out.shape == (120, 160, 3) and len(mixed) == 4
    np.testing.assert_array_equal(rasterize(mixed.polygons[3], 120, 160), rasterize(ot.polygons[2], 120, 160))


def test_train_transform_end_to_end_outlines_on_objects():
    """The whole training pipeline (mosaic, affine, cutout, flips, rot90) on painted images."""
    cfg = TrainConfig(mosaic=1.0, degrees=10, shear=5, scale=0.3, translate=0.1, hsv_h=0, hsv_s=0, hsv_v=0,
                      fliplr=0.5, flipud=0.5, rot90=0.5, cutout=0.5, mixup=0, brightness=0, blur=0, noise=0,
                      gamma=0, to_gray=0, min_box_visibility=0.2)
    img, t = painted_scene()
    transform = TrainTransform(cfg, 128)
    checked = 0
    for seed in range(6):
        out, moved, info = transform(0, lambda j: (img, t), 4, np.random.default_rng(seed))
        assert moved.polygons is not None and len(moved.polygons) == len(moved)
        masks = rasterize_objects(moved.polygons, 128, 128).astype(bool)
        for m, label in zip(masks, moved.labels):
            if m.sum() >= 100:  # slivers at tile edges are mostly interpolated border
                colour = colour_mask(out, COLOURS[label])
                assert colour[m].mean() >= 0.9, (seed, label, colour[m].mean())
                checked += 1
    assert checked >= 10


# ---- the dataset hands masks over only when asked -------------------------------------------
def test_dataset_masks_flag(tmp_path):
    import cv2

    from detforge.data.dataset import DetectionDataset
    from detforge.records import Sample

    img, t = painted_scene()
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    boxless = Sample(path, t.boxes, t.labels, 160, 120, polygons=[[r.astype(np.float32) for r in p] for p in t.polygons])
    cfg = TrainConfig(imgsz=96, mosaic=0, mixup=0, degrees=0, translate=0, scale=0, fliplr=0, hsv_h=0, hsv_s=0,
                      hsv_v=0, resize_mode="letterbox")
    plain = DetectionDataset([boxless], cfg, train=True)
    image, target, _ = plain[0]
    assert "masks" not in target
    ds = DetectionDataset([boxless], cfg, train=True, masks=True)
    image, target, _ = ds[0]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and tuple(masks.shape) == (3, 96, 96)
    out = image.permute(1, 2, 0).numpy()
    for m, label in zip(masks.numpy().astype(bool), target["labels"].tolist()):
        assert colour_mask(out, COLOURS[label])[m].mean() >= MIN_SHARE
    # an object without an outline gets its box as mask; multi-scale resizes masks too
    no_outline = Sample(path, t.boxes, t.labels, 160, 120, polygons=[t.polygons[0], [], t.polygons[2]])
    _, target, _ = DetectionDataset([no_outline], cfg, train=False, masks=True)[0]
    x1, y1, x2, y2 = target["boxes"][1].tolist()
    assert target["masks"][1].sum().item() == pytest.approx((x2 - x1) * (y2 - y1), rel=0.05)
    _, resized = resize_batch(torch.zeros(1, 3, 96, 96, dtype=torch.uint8), [target], 64)
    assert tuple(resized[0]["masks"].shape) == (3, 64, 64)


def test_masks_to_original_undoes_letterbox():
    img, t = painted_scene()
    _, moved, scale, pad = letterbox(img, t, 96)
    masks = rasterize_objects(moved.polygons, 96, 96)
    back = masks_to_original(masks, scale, pad, (120, 160))
    truth = rasterize_objects(t.polygons, 120, 160)
    for a, b in zip(back.astype(bool), truth.astype(bool)):
        assert (a & b).sum() / (a | b).sum() > 0.9  # IoU after a 0.6x round trip


def test_copy_blend_pastes_the_outline_with_its_object(monkeypatch):
    from detforge.data.augment import copy_blend as cb

    monkeypatch.setattr(cb, "BLEND_RANGE", (1.0, 1.0))
    donor, dt = painted_scene()
    img = np.full((120, 160, 3), BG, np.uint8)
    for keep in ([True, False, False], [False, True, False]):  # one at a time: a later cut would hide it
        out, t = cb.copy_blend(img.copy(), Targets.from_boxes(np.zeros((0, 4)), [], []), donor,
                               dt.select(np.array(keep)), np.random.default_rng(3))
        assert len(t) == 1 and t.polygons is not None
        label = t.labels[0]
        inside, covered = mask_shares(out, t, label)
        assert inside >= MIN_SHARE and covered >= MIN_SHARE, (label, inside, covered)
