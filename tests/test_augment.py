"""Augmentations: every geometric transform keeps boxes on their objects (checked on pixels),
MixUp / cutout / photometric tables against hand-worked numbers, determinism."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from detforge.config import TrainConfig
from detforge.data.augment import (
    PAD_VALUE,
    Targets,
    TrainTransform,
    cutout,
    flip_lr,
    flip_ud,
    letterbox,
    mixup_geometry,
    mixup_overlay,
    mosaic4,
    random_affine_matrix,
    rotate90,
    stretch,
    visible_fraction,
    warp_image,
    warp_targets,
)
from detforge.data.augment.geometric import draw_image, scaling, snap_axis_aligned, translation
from detforge.data.augment.photometric import gaussian_noise, hsv_lut, hsv_matrix, random_hsv, to_gray, tone_lut

BG = 60  # background gray, distinct from the 114 padding
RED, GREEN, BLUE, YELLOW = (230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)


def scene(h, w, rect, color=RED, bg=BG):
    img = np.full((h, w, 3), bg, np.uint8)
    x1, y1, x2, y2 = rect
    img[y1:y2, x1:x2] = color
    return img, Targets.from_boxes([rect], [0])


def color_mask(img, color, tol=40):
    return (np.abs(img.astype(int) - np.array(color)).max(-1) <= tol)


def color_bbox(img, color, tol=40):
    ys, xs = np.nonzero(color_mask(img, color, tol))
    assert len(xs), "colour not found in the image"
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def fill_fraction(img, box, color, inset=2):
    """Share of the pixels under the box (inset a little: edges are interpolated) of colour."""
    x1, y1, x2, y2 = np.rint(box).astype(int) + np.array([inset, inset, -inset, -inset])
    return color_mask(img[y1:y2, x1:x2], color).mean()


def margin_fraction(img, box, color, margin=4):
    """Share of colour in a ring ``margin`` px outside the box (must be ~0)."""
    h, w = img.shape[:2]
    x1, y1, x2, y2 = np.rint(box).astype(int)
    ring = np.zeros((h, w), bool)
    ring[max(y1 - margin, 0):min(y2 + margin, h), max(x1 - margin, 0):min(x2 + margin, w)] = True
    ring[max(y1 - 1, 0):min(y2 + 1, h), max(x1 - 1, 0):min(x2 + 1, w)] = False
    return color_mask(img, color)[ring].mean() if ring.any() else 0.0


def assert_box_on_object(img, box, color, tol=1.5):
    assert np.abs(color_bbox(img, color) - box).max() <= tol, (color_bbox(img, color), box)
    assert fill_fraction(img, box, color) > 0.9
    assert margin_fraction(img, box, color) < 0.02


# ---- flips and rot90 -----------------------------------------------------------------------
def test_flips_hand_worked_and_on_pixels():
    img, t = scene(60, 100, (10, 20, 30, 50))
    out, tl = flip_lr(img, t)
    np.testing.assert_array_equal(tl.boxes, [[70, 20, 90, 50]])
    assert_box_on_object(out, tl.boxes[0], RED, tol=0)
    out, tu = flip_ud(img, t)
    np.testing.assert_array_equal(tu.boxes, [[10, 10, 30, 40]])
    assert_box_on_object(out, tu.boxes[0], RED, tol=0)


@pytest.mark.parametrize("k,expected", [(1, [20, 70, 50, 90]), (2, [70, 10, 90, 40]), (3, [10, 10, 40, 30])])
def test_rot90_hand_worked_and_on_pixels(k, expected):
    img, t = scene(60, 100, (10, 20, 30, 50))
    out, tr = rotate90(img, t, k)
    np.testing.assert_array_equal(out, np.rot90(img, k))
    np.testing.assert_array_equal(tr.boxes, [expected])
    assert_box_on_object(out, tr.boxes[0], RED, tol=0)


# ---- affine -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "degrees,shear,scale",
    [(0, 0, 0.6), (30, 0, 1.0), (0, 15, 1.0), (20, 10, 1.3)],
    ids=["scale", "rotate", "shear", "all"],
)
def test_affine_box_is_the_objects_enclosing_box(degrees, shear, scale):
    img, t = scene(120, 160, (50, 40, 100, 80))
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(shear))
    m = translation(100, 100) @ sh @ rot @ scaling(scale, scale) @ translation(-75, -60)
    out = warp_image(img, m, 200)
    moved = warp_targets(t, m, 200, 200, min_size=2, min_visibility=0.1)
    assert len(moved) == 1
    assert np.abs(color_bbox(out, RED) - moved.boxes[0]).max() <= 1.5
    if degrees == 0 and shear == 0:
        assert fill_fraction(out, moved.boxes[0], RED) > 0.9
    assert margin_fraction(out, moved.boxes[0], RED) < 0.02


def test_random_affine_parameters_stay_in_range():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = random_affine_matrix(rng, (50, 50), 100, degrees=10, translate=0.1, scale=0.5, shear=0)
        det = np.linalg.det(m[:2, :2])
        assert 0.25 - 1e-9 <= det <= 2.25 + 1e-9  # scale in [0.5, 1.5], area scales by s^2
        centre = m @ np.array([50, 50, 1.0])
        assert 40 - 1e-9 <= centre[0] <= 60 + 1e-9 and 40 - 1e-9 <= centre[1] <= 60 + 1e-9


def test_boxes_leaving_the_image_or_too_small_are_dropped():
    boxes = [[0, 0, 40, 40], [85, 10, 105, 30], [50, 50, 51, 60]]
    t = Targets.from_boxes(boxes, [0, 1, 2])
    # shift right by 10: box 1 keeps 5 of 20 px width (25% visible), box 2 is 1 px wide
    m = translation(10, 0)
    kept = warp_targets(t, m, 100, 100, min_size=2, min_visibility=0.3)
    np.testing.assert_array_equal(kept.labels, [0])
    kept = warp_targets(t, m, 100, 100, min_size=2, min_visibility=0.2)
    np.testing.assert_array_equal(kept.labels, [0, 1])
    np.testing.assert_allclose(kept.boxes[1], [95, 10, 100, 30])


# ---- mosaic -------------------------------------------------------------------------------------
def _mosaic_tiles():
    sizes = [(100, 80), (80, 100), (90, 90), (100, 60)]
    colors = [RED, GREEN, BLUE, YELLOW]
    tiles = []
    for k, ((w, h), c) in enumerate(zip(sizes, colors)):
        img, t = scene(h, w, (w // 4, h // 4, 3 * w // 4, 3 * h // 4), c)
        tiles.append((img, Targets.from_boxes(t.boxes, [k])))
    return tiles, colors


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_mosaic_boxes_follow_each_tile(mode):
    tiles, colors = _mosaic_tiles()
    s = 100
    affine = translation(50.3, 50.3) @ scaling(0.55, 0.55) @ translation(-s, -s)  # 2s canvas -> s
    out, t = mosaic4(tiles, s, (100, 100), affine, mode, min_size=2, min_visibility=0.1)
    assert out.shape == (s, s, 3) and out.dtype == np.uint8
    assert sorted(t.labels.tolist()) == [0, 1, 2, 3]
    for box, label in zip(t.boxes, t.labels):
        assert_box_on_object(out, box, colors[label])
    # tiles cover output [0,6.3,94.3,83.3] around the centre (50.3, 50.3), meeting between
    # pixels: no padding gray shows or bleeds in there (every gray pixel is the tiles' own)
    region = out[8:82, 1:92].astype(int)
    gray = (region[..., 0] == region[..., 1]) & (region[..., 1] == region[..., 2])
    assert (region[gray][:, 0] == BG).all()


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_scale_and_shift_drawn_by_resize_keeps_boxes_and_seams(seed):
    """Scale-and-shift affines take the resize path: snapped to whole pixels, boxes still on
    their objects, and tiles meet at the centre without padding gray between them."""
    rng = np.random.default_rng(seed)
    tiles, colors = _mosaic_tiles()
    s = 100
    k = rng.uniform(0.5, 1.5)
    affine = translation(*rng.uniform(40, 60, 2)) @ scaling(k, k) @ translation(-s, -s)
    center = tuple(int(v) for v in rng.integers(70, 130, 2))
    out, t = mosaic4(tiles, s, center, affine, "letterbox", min_size=3, min_visibility=0.3)
    for box, label in zip(t.boxes, t.labels):
        if min(box[2] - box[0], box[3] - box[1]) >= 6:
            assert_box_on_object(out, box, colors[label])
    # across each seam through the centre, padding gray never lies between two tile pixels
    cx = int(affine[0, 0] * center[0] + affine[0, 2])
    cy = int(affine[1, 1] * center[1] + affine[1, 2])
    pad = (out == PAD_VALUE).all(-1)
    strips = [pad[y, max(cx - 3, 0):cx + 3] for y in range(s)] + [pad[max(cy - 3, 0):cy + 3, x] for x in range(s)]
    for strip in strips:
        inside = np.nonzero(~strip)[0]
        if len(inside):
            assert not strip[inside[0]:inside[-1]].any(), strip


def test_snap_axis_aligned_moves_corners_under_a_pixel():
    m = translation(10.37, -4.6) @ scaling(0.731, 1.29)
    window, rect, snapped = snap_axis_aligned(m, (0, 0, 120, 90), 100, 100)
    # rows: y -> 1.29 y - 4.6 is below 0 up to y = 3.57 and past 100 from y = 81.09, so rows
    # 3..81 are (partly) visible; columns: all 120 land inside (0.731 * 120 + 10.37 = 98.1)
    assert window == (0, 3, 120, 82)
    assert rect == (10, -1, 98, 101)  # round(10.37), round(-0.73), round(98.09), round(101.18)
    corners = np.array([[window[0], window[1], 1.0], [window[2], window[3], 1.0]])
    np.testing.assert_allclose((corners @ snapped.T)[:, :2], [rect[:2], rect[2:]])  # window -> rect exactly
    assert np.abs(corners @ snapped.T - corners @ m.T).max() < 1.0  # and within a pixel of m
    assert snap_axis_aligned(translation(200, 0), (0, 0, 50, 50), 100, 100) is None  # off the output


def test_draw_image_whole_pixel_scale_equals_cv2_resize():
    img = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    out, used = draw_image(img, translation(7, 5) @ scaling(2, 2), 100)
    np.testing.assert_array_equal(out[5:65, 7:87], cv2.resize(img, (80, 60), interpolation=cv2.INTER_LINEAR))
    assert (out[:5] == PAD_VALUE).all() and (out[65:] == PAD_VALUE).all() and (out[:, :7] == PAD_VALUE).all()
    np.testing.assert_allclose(used, translation(7, 5) @ scaling(2, 2))
    # a rotation keeps the general warp and the matrix as given
    a = math.radians(10)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    _, used = draw_image(img, rot, 100)
    assert used is rot


def test_mosaic_with_rotation_and_offset_centre():
    tiles, colors = _mosaic_tiles()
    s = 100
    a = math.radians(15)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    affine = translation(55, 45) @ rot @ scaling(0.6, 0.6) @ translation(-s, -s)
    out, t = mosaic4(tiles, s, (80, 120), affine, "letterbox", min_size=2, min_visibility=0.1)
    assert len(t) >= 2
    for box, label in zip(t.boxes, t.labels):
        found = color_bbox(out, colors[label])
        # the box encloses the visible object and is tight around it
        assert (found[:2] >= box[:2] - 1.5).all() and (found[2:] <= box[2:] + 1.5).all()
        assert np.abs(found - box).max() <= 2.5


def test_mosaic_draws_tiles_straight_into_the_output():
    tiles, colors = _mosaic_tiles()
    # unscaled view of canvas [20, 120)^2; centre (60, 60) cuts tile 0 (100x80, bottom-right
    # corner at the centre) on its left and top
    affine = translation(-20, -20)
    out, t = mosaic4(tiles, 100, (60, 60), affine, "letterbox", min_size=1, min_visibility=0.0)
    # tile 0: object [25,20,75,60] + offset (60-100, 60-80) -> [-15,0,35,40] -> [-35,-20,15,20]
    np.testing.assert_allclose(t.boxes[t.labels == 0][0], [0, 0, 15, 20], atol=1e-4)
    # tile 3 (100x60) at (60, 60): object [25,15,75,45] -> [85,75,135,105] -> [65,55,100,85]
    np.testing.assert_allclose(t.boxes[t.labels == 3][0], [65, 55, 100, 85], atol=1e-4)
    for label in (0, 3):
        assert_box_on_object(out, t.boxes[t.labels == label][0], colors[label], tol=0.5)
    assert (out[:40, :40][~color_mask(out[:40, :40], RED)] == BG).all()  # tile 0's own background


# ---- resize ---------------------------------------------------------------------------------------
def test_letterbox_maps_back_exactly():
    img, t = scene(60, 100, (10, 20, 30, 50))
    out, tt, (sx, sy), (px, py) = letterbox(img, t, 50)
    assert out.shape == (50, 50, 3)
    assert (sx, sy) == (0.5, 0.5) and (px, py) == (0, 10)
    np.testing.assert_allclose(tt.boxes, [[5, 20, 15, 35]])
    assert (out[:10] == PAD_VALUE).all() and (out[40:] == PAD_VALUE).all()
    back = (tt.boxes - [px, py, px, py]) / [sx, sy, sx, sy]
    np.testing.assert_allclose(back, t.boxes)
    assert fill_fraction(out, tt.boxes[0], RED, inset=1) > 0.9


def test_stretch_maps_back_exactly():
    img, t = scene(60, 100, (10, 20, 30, 50))
    out, tt, (sx, sy), pad = stretch(img, t, 120)
    assert out.shape == (120, 120, 3) and pad == (0, 0)
    np.testing.assert_allclose(tt.boxes, [[12, 40, 36, 100]])
    assert_box_on_object(out, tt.boxes[0], RED)


# ---- mixup -----------------------------------------------------------------------------------------
def test_mixup_overlay_blends_and_keeps_both_box_sets():
    a, ta = scene(40, 40, (2, 2, 12, 12), (200, 0, 0), bg=0)
    b, tb = scene(40, 40, (20, 20, 30, 30), (0, 100, 0), bg=0)
    out, t = mixup_overlay(a, ta, b, Targets.from_boxes(tb.boxes, [1]), 0.75)
    assert out[5, 5].tolist() == [150, 0, 0]  # 0.75 * 200
    assert out[25, 25].tolist() == [0, 25, 0]  # 0.25 * 100
    np.testing.assert_array_equal(t.labels, [0, 1])
    np.testing.assert_array_equal(t.weights, [1, 1])


def test_mixup_geometry_places_both_images_unscaled():
    a, ta = scene(30, 50, (5, 5, 15, 15), (200, 200, 200), bg=100)  # h=30, w=50
    b, tb = scene(60, 20, (2, 40, 12, 55), (0, 0, 200), bg=40)  # h=60, w=20
    out, t = mixup_geometry(a, ta, b, Targets.from_boxes(tb.boxes, [1]), 0.6)
    assert out.shape == (60, 50, 3)
    np.testing.assert_array_equal(t.boxes, [[5, 5, 15, 15], [2, 40, 12, 55]])  # not moved
    np.testing.assert_allclose(t.weights, [0.6, 0.4])
    assert out[10, 10].tolist() == [136, 136, 136]  # both: 0.6*200 + 0.4*40
    assert out[10, 30].tolist() == [60, 60, 60]  # image 1 only: 0.6*100
    assert out[50, 5].tolist() == [0, 0, 80]  # image 2 only: 0.4*200
    assert out[50, 40].tolist() == [0, 0, 0]  # neither


# ---- cutout ------------------------------------------------------------------------------------------
def test_cutout_visibility_and_drops():
    img = np.full((100, 100, 3), BG, np.uint8)
    t = Targets.from_boxes([[0, 0, 20, 20], [50, 50, 70, 70], [80, 0, 100, 10]], [0, 1, 2])
    rects = [(0, 0, 20, 15), (45, 45, 60, 60), (10, 10, 20, 20)]
    hidden = np.zeros((100, 100), bool)
    for x1, y1, x2, y2 in rects:
        hidden[y1:y2, x1:x2] = True
    # box 0: 300 of 400 by rect 0, plus rect 2's 10x5 below y=15 -> 350 hidden
    np.testing.assert_allclose(visible_fraction(t.boxes, hidden), [50 / 400, 300 / 400, 1.0])
    out, kept = cutout(img, t, rects, fill=0, min_visibility=0.5)
    np.testing.assert_array_equal(kept.labels, [1, 2])
    assert (out[0:15, 0:20] == 0).all() and (out[80:, 80:] == BG).all()


# ---- photometric ---------------------------------------------------------------------------------------
def test_hsv_lut_identity_and_hue_shift():
    ident = hsv_lut(0, 0, 0)
    np.testing.assert_array_equal(ident[:, 0, 0], np.arange(256))
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    hsv = cv2.cvtColor(red, cv2.COLOR_RGB2HSV_FULL)
    green = cv2.cvtColor(cv2.LUT(hsv, hsv_lut(1 / 3, 0, 0)), cv2.COLOR_HSV2RGB_FULL)
    assert green[0, 0].tolist() == [0, 255, 0]
    dim = cv2.cvtColor(cv2.LUT(hsv, hsv_lut(0, -0.5, -0.5)), cv2.COLOR_HSV2RGB_FULL)
    assert dim[0, 0].tolist() == [128, 64, 64]


def test_hsv_matrix_hand_worked():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(hsv_matrix(0, 0, 0), np.eye(3))
    np.testing.assert_array_equal(cv2.transform(img, hsv_matrix(0, 0, 0)), img)  # lossless at zero gains
    gray = np.full((2, 2, 3), 100, np.uint8)
    assert cv2.transform(gray, hsv_matrix(0.2, 0.5, 0.5))[0, 0].tolist() == [150, 150, 150]  # gray: value only
    # saturation -1 leaves the luma 0.299 R + 0.587 G + 0.114 B in every channel
    luma = np.rint(img.astype(float) @ [0.299, 0.587, 0.114])
    assert np.abs(cv2.transform(img, hsv_matrix(0, -1, 0)).astype(float) - luma[..., None]).max() <= 1
    # a hue turn keeps luma (in gamut); a sixth of the circle takes a red to a yellow (HSV hue
    # 57.7 deg), a third to a green (101.3 deg: YIQ angles are not the HSV hexcone's)
    red = np.full((1, 1, 3), (160, 90, 90), np.uint8)
    for turn, hue_deg in ((1 / 6, 57.7), (1 / 3, 101.3)):
        out = cv2.transform(red, hsv_matrix(turn, 0, 0))
        hue = int(cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)[0, 0, 0]) * 360 / 256
        assert abs(hue - hue_deg) < 2, (turn, out, hue)
        assert abs(out.astype(float) @ [0.299, 0.587, 0.114] - red.astype(float) @ [0.299, 0.587, 0.114]).max() < 1


def test_random_hsv_modes():
    img = np.full((8, 8, 3), (200, 60, 60), np.uint8)
    fast = random_hsv(img, np.random.default_rng(1), 0.0, 0.0, 0.4)
    ref = random_hsv(img, np.random.default_rng(1), 0.0, 0.0, 0.4, mode="opencv")
    assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1  # a value change is the same in both
    assert (img == (200, 60, 60)).all()  # not in place unless asked
    assert random_hsv(img, np.random.default_rng(1), 0, 0, 0) is img
    with pytest.raises(ValueError, match="hsv_mode"):
        random_hsv(img, np.random.default_rng(1), 0.1, 0.1, 0.1, mode="lab")


def test_tone_lut_numbers():
    np.testing.assert_array_equal(tone_lut(), np.arange(256))
    assert tone_lut(gamma=2.0)[128] == 64  # 255 * (128/255)^2 = 64.25
    assert tone_lut(alpha=1.2, beta=10)[100] == 130
    assert tone_lut(alpha=1.2, beta=10)[250] == 255


def test_noise_and_gray():
    img = np.full((200, 200, 3), 128, np.uint8)
    noisy = gaussian_noise(img, np.random.default_rng(0), std_range=(10, 10))
    diff = noisy.astype(float) - 128
    assert abs(diff.mean()) < 0.2 and 9.5 < diff.std() < 10.5
    g = to_gray(np.dstack([np.full((2, 2), v, np.uint8) for v in (255, 0, 0)]))
    assert g[0, 0].tolist() == [76, 76, 76]  # 0.299 * 255


# ---- the whole training transform -------------------------------------------------------------------------
def _loader(images):
    def load(i):
        return images[i]
    return load


def test_train_transform_deterministic_and_boxes_on_objects():
    colors = [RED, GREEN, BLUE, YELLOW]
    items = []
    for k in range(4):
        img, t = scene(80 + 10 * k, 120 - 10 * k, (20, 20 + 5 * k, 60, 60), colors[k])
        items.append((img, Targets.from_boxes(t.boxes, [k])))
    cfg = TrainConfig(imgsz=96, mosaic=0.5, hsv_h=0, hsv_s=0, hsv_v=0, degrees=0, shear=0,
                      fliplr=0.5, flipud=0.5, rot90=0.5, translate=0.1, scale=0.3)
    tf = TrainTransform(cfg, 96)
    a = tf(1, _loader(items), 4, np.random.default_rng([0, 3, 1]))
    b = tf(1, _loader(items), 4, np.random.default_rng([0, 3, 1]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1].boxes, b[1].boxes)
    seen_mosaic = set()
    for seed in range(12):
        img, t, info = tf(seed % 4, _loader(items), 4, np.random.default_rng(seed))
        seen_mosaic.add(info["mosaic"])
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        for box, label in zip(t.boxes, t.labels):
            if min(box[2] - box[0], box[3] - box[1]) >= 6:
                assert fill_fraction(img, box, colors[label]) > 0.9
                assert margin_fraction(img, box, colors[label], margin=3) < 0.02
    assert seen_mosaic == {True, False}


def test_strong_augmentation_off_means_no_mosaic_no_mixup():
    items = [scene(50, 50, (10, 10, 30, 30))] * 2
    cfg = TrainConfig(imgsz=64, mosaic=1.0, mixup=1.0)
    tf = TrainTransform(cfg, 64)
    _, _, on = tf(0, _loader(items), 2, np.random.default_rng(0), strong=True)
    _, _, off = tf(0, _loader(items), 2, np.random.default_rng(0), strong=False)
    assert on == {"mosaic": True, "mixup": "overlay"}
    assert off == {"mosaic": False, "mixup": None}


def test_random_affine_zoom_multiplies_the_drawn_scale():
    # no rotation, shear or translation jitter: the matrix is zoom * s about the centre
    for zoom in (1.0, 0.5):
        m = random_affine_matrix(np.random.default_rng(0), (50, 50), 100, degrees=0, translate=0, scale=0, shear=0,
                                 zoom=zoom)
        np.testing.assert_allclose(m, [[zoom, 0, 50 - 50 * zoom], [0, zoom, 50 - 50 * zoom], [0, 0, 1]])


def test_mosaic_zoom_half_shows_four_whole_tiles_at_half_scale():
    # four 100 x 100 tiles (stretch to 100), one 40 x 40 object each; zoom 0.5 without scale or
    # translate jitter: the 200 x 200 canvas lands on the 100 x 100 output, the tiles meet at its
    # centre, and every object is whole at half its side
    colors = [RED, GREEN, BLUE, YELLOW]
    items = []
    for k in range(4):
        img, t = scene(100, 100, (30, 30, 70, 70), colors[k])
        items.append((img, Targets.from_boxes(t.boxes, [k])))
    cfg = TrainConfig(imgsz=100, mosaic=1.0, mixup=0, mosaic_zoom=0.5, scale=0, translate=0, degrees=0, shear=0,
                      hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0)
    tf = TrainTransform(cfg, 100)
    for seed in range(6):
        img, t, info = tf(seed % 4, _loader(items), 4, np.random.default_rng(seed))
        assert info["mosaic"] and len(t.labels) == 4
        sides = np.stack([t.boxes[:, 2] - t.boxes[:, 0], t.boxes[:, 3] - t.boxes[:, 1]], 1)
        np.testing.assert_allclose(sides, 20.0, atol=0.5)
        for box, label in zip(t.boxes, t.labels):
            # each object sits at (15..35) inside its 50 x 50 quadrant
            assert min(abs(box[0] - 15), abs(box[0] - 65)) <= 0.5 and min(abs(box[1] - 15), abs(box[1] - 65)) <= 0.5
            assert fill_fraction(img, box, colors[label], inset=1) > 0.9
    # zoom 1 (YOLO): the same tiles cropped around a jittered centre show fewer whole objects
    yolo = TrainTransform(cfg.model_copy(update={"mosaic_zoom": 1.0}), 100)
    shown = [len(yolo(s % 4, _loader(items), 4, np.random.default_rng(s))[1].labels) for s in range(6)]
    assert max(shown) < 4
