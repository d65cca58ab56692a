"""DetectionDataset, caches, fraction, the loader, multi-scale and previews."""

from __future__ import annotations

import logging
import os
import random
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import torch

from detforge.config import TrainConfig
from detforge.data import dataset as dataset_mod
from detforge.data.dataset import CacheError, DetectionDataset, select_fraction
from detforge.data.loader import (
    EpochSampler,
    build_dataloader,
    collate,
    loader_set_epoch,
    multi_scale_size,
    resize_batch,
    retain_freed_memory,
)
from detforge.data.preview import class_color, save_batch_preview
from detforge.records import Sample

COLORS = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]
BG = 60


def _color_share(img_chw: torch.Tensor, box, color, inset=2) -> float:
    img = img_chw.permute(1, 2, 0).numpy().astype(int)
    x1, y1, x2, y2 = np.rint(box.numpy()).astype(int) + np.array([inset, inset, -inset, -inset])
    patch = img[y1:y2, x1:x2]
    return float((np.abs(patch - np.array(color)).max(-1) <= 40).mean())


@pytest.fixture()
def tiny_samples(tmp_path):
    """10 PNGs of varied size: 8 with one coloured rectangle (class = colour), 2 background."""
    rng = np.random.default_rng(7)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    samples = []
    for i in range(10):
        w, h = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        img = np.full((h, w, 3), BG, np.uint8)
        boxes, labels = [], []
        if i < 8:
            label = i % 3
            x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            x2, y2 = x1 + w // 3, y1 + h // 3
            img[y1:y2, x1:x2] = COLORS[label]
            boxes, labels = [[x1, y1, x2, y2]], [label]
        path = img_dir / f"img_{i:02d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        samples.append(Sample(path, np.array(boxes, np.float32).reshape(-1, 4), labels, w, h))
    return samples


def _cfg(**kw):
    base = dict(imgsz=64, epochs=10, close_mosaic=2, seed=3, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0,
                degrees=0.0, mosaic=0.7, fliplr=0.5, flipud=0.3)
    base.update(kw)
    return TrainConfig(**base)


def _equal_items(a, b):
    assert torch.equal(a[0], b[0])
    for k in ("boxes", "labels", "weights"):
        assert torch.equal(a[1][k], b[1][k])


# ---- items ---------------------------------------------------------------------------------
def test_item_types_and_boxes_on_objects(tiny_samples):
    ds = DetectionDataset(tiny_samples, _cfg(), train=True)
    saw_mosaic = False
    for i in range(len(ds)):
        img, target, meta = ds[(0, i)]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["weights"].dtype == torch.float32 and (target["weights"] == 1).all()
        assert meta["index"] == i and meta["image_path"] == str(tiny_samples[i].image_path)
        assert meta["orig_size"] == (tiny_samples[i].height, tiny_samples[i].width)
        saw_mosaic |= meta["mosaic"]
        for box, label in zip(target["boxes"], target["labels"]):
            if min(box[2] - box[0], box[3] - box[1]) >= 6:
                assert _color_share(img, box, COLORS[int(label)]) > 0.9
    assert saw_mosaic


def test_eval_items_map_back_to_original_pixels(tiny_samples):
    for mode in ("letterbox", "stretch"):
        ds = DetectionDataset(tiny_samples, _cfg(resize_mode=mode), train=False)
        for i in range(8):
            img, target, meta = ds[i]
            (sx, sy), (px, py) = meta["scale"], meta["pad"]
            back = (target["boxes"].numpy() - [px, py, px, py]) / [sx, sy, sx, sy]
            np.testing.assert_allclose(back, tiny_samples[i].boxes, atol=1e-3)
            assert _color_share(img, target["boxes"][0], COLORS[i % 3]) > 0.9


def test_deterministic_per_seed_epoch_index(tiny_samples):
    ds = DetectionDataset(tiny_samples, _cfg(mixup=0.5), train=True)
    other = DetectionDataset(tiny_samples, _cfg(mixup=0.5), train=True)
    for i in range(len(ds)):
        _equal_items(ds[(4, i)], other[(4, i)])
    assert any(not torch.equal(ds[(4, i)][0], ds[(5, i)][0]) for i in range(len(ds)))
    ds.set_epoch(4)
    _equal_items(ds[2], other[(4, 2)])  # plain integer indexing uses the set epoch


def test_close_mosaic_turns_mosaic_and_mixup_off(tiny_samples):
    ds = DetectionDataset(tiny_samples, _cfg(mosaic=1.0, mixup=1.0, epochs=10, close_mosaic=3), train=True)
    assert [ds.mosaic_enabled(e) for e in range(10)] == [True] * 7 + [False] * 3
    assert all(ds[(6, i)][2]["mosaic"] and ds[(6, i)][2]["mixup"] == "overlay" for i in range(4))
    assert not any(ds[(7, i)][2]["mosaic"] or ds[(7, i)][2]["mixup"] for i in range(4))
    # open_mosaic: plain images first too (DEIM's first stage), the same epochs closed at the end
    opened = DetectionDataset(tiny_samples, _cfg(mosaic=1.0, mixup=1.0, epochs=10, close_mosaic=3, open_mosaic=2),
                              train=True)
    assert [opened.mosaic_enabled(e) for e in range(10)] == [False] * 2 + [True] * 5 + [False] * 3
    assert not any(opened[(1, i)][2]["mosaic"] or opened[(1, i)][2]["mixup"] for i in range(4))
    assert all(opened[(2, i)][2]["mosaic"] and opened[(2, i)][2]["mixup"] == "overlay" for i in range(4))


def test_geometry_mixup_weights(tiny_samples):
    ds = DetectionDataset(tiny_samples, _cfg(mosaic=0.0, mixup=1.0, mixup_mode="geometry",
                                             scale=0.0, translate=0.0, fliplr=0, flipud=0), train=True)
    _, target, meta = ds[(0, 0)]
    assert meta["mixup"] == "geometry"
    w = target["weights"].numpy()
    assert len(w) == 2 and 0 < w[0] < 1 and abs(w.sum() - 1) < 1e-6  # ratio and 1 - ratio
    # the ratios follow Beta(1.5, 1.5) (Zhang et al. 2019): mean 0.5, variance 1/16
    items = [ds[(e, i)] for e in range(7) for i in range(10)]
    draws = [t["weights"].numpy() for _, t, m in items if m["mixup"] == "geometry"]
    # the first box's weight is the ratio (or 1 - ratio when the first image had no box: the
    # same distribution, Beta(1.5, 1.5) being symmetric)
    ratios = np.array([w[0] for w in draws if len(w)])
    assert len(ratios) >= 60
    assert abs(ratios.mean() - 0.5) < 0.06 and 0.04 < ratios.var() < 0.09, (ratios.mean(), ratios.var())


def test_geometry_mixup_blends_pixels_by_the_ratio():
    from detforge.data.augment import mixup_geometry
    from detforge.data.augment.targets import Targets

    a, b = np.full((4, 6, 3), 200, np.uint8), np.full((6, 4, 3), 100, np.uint8)
    ta = Targets(np.array([[0, 0, 2, 2]], np.float32), np.array([0]), np.ones(1, np.float32))
    tb = Targets(np.array([[1, 1, 3, 3]], np.float32), np.array([1]), np.ones(1, np.float32))
    out, t = mixup_geometry(a, ta, b, tb, 0.25)
    assert out.shape == (6, 6, 3)
    assert out[0, 0, 0] == 125 and out[0, 5, 0] == 50 and out[5, 0, 0] == 75 and out[5, 5, 0] == 0
    assert np.allclose(t.weights, [0.25, 0.75]) and np.allclose(t.boxes, [[0, 0, 2, 2], [1, 1, 3, 3]])


def test_ignore_background_epochs(tiny_samples):
    ds = DetectionDataset(tiny_samples, _cfg(ignore_background_epochs=2), train=True)
    ds.set_epoch(0)
    assert len(ds) == 8
    sampler = EpochSampler(ds, shuffle=True, seed=0)
    for epoch, expected in ((0, 8), (1, 8), (2, 10)):
        sampler.set_epoch(epoch)
        got = [i for _, i in sampler]
        assert len(got) == expected and set(got) == set(range(expected))
    ds.set_epoch(2)
    assert len(ds) == 10


# ---- bad images at run time -----------------------------------------------------------------------
def test_decode_failure_is_replaced_counted_and_warned_once(tiny_samples, caplog):
    bad = tiny_samples[3].image_path
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = DetectionDataset(tiny_samples, _cfg(), train=False)
    with caplog.at_level(logging.WARNING, logger="detforge.data.dataset"):
        img, target, meta = ds[3]
        again = ds[3]
    assert meta["index"] == 4 and meta["replaced"] == str(bad)
    _equal_items((img, target), again[:2])
    _equal_items((img, target), ds[4][:2])
    assert list(ds.bad_images) == [str(bad)]
    assert ds.bad_images[str(bad)].kind == "unreadable_image"
    assert ds.bad_image_hits[str(bad)] == 2
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1
    # training: mosaic tiles that hit it are replaced too, and the epoch goes on
    tr = DetectionDataset(tiny_samples, _cfg(mosaic=1.0), train=True)
    for i in range(len(tr)):
        tr[(0, i)]
    assert str(bad) in tr.bad_images


def test_loader_workers_report_bad_images_to_the_main_process(tiny_samples):
    bad = tiny_samples[5].image_path
    bad.write_bytes(b"")
    ds = DetectionDataset(tiny_samples, _cfg(), train=False)
    loader = build_dataloader(ds, batch_size=4, train=False, workers=1, seed=0)
    loader_set_epoch(loader, 0)
    metas = [m for _, _, ms in loader for m in ms]
    assert len(metas) == 10
    assert [m["index"] for m in metas] == [0, 1, 2, 3, 4, 6, 6, 7, 8, 9]
    assert ds.bad_images[str(bad)].message == "empty file (0 bytes)"


# ---- caches --------------------------------------------------------------------------------------
def test_cached_and_uncached_items_are_identical(tiny_samples, tmp_path):
    cfg = _cfg(mosaic=0.8, mixup=0.3)
    plain = DetectionDataset(tiny_samples, cfg, train=True)
    ram = DetectionDataset(tiny_samples, cfg, train=True, cache="ram")
    disk = DetectionDataset(tiny_samples, cfg, train=True, cache="disk", cache_dir=tmp_path / "c")
    for epoch in (0, 9):
        for i in range(len(plain)):
            ref = plain[(epoch, i)]
            _equal_items(ref, ram[(epoch, i)])
            _equal_items(ref, disk[(epoch, i)])
    val_plain = DetectionDataset(tiny_samples, cfg, train=False)
    val_disk = DetectionDataset(tiny_samples, cfg, train=False, cache="disk", cache_dir=tmp_path / "c")
    for i in range(len(val_plain)):
        _equal_items(val_plain[i], val_disk[i])


def test_ram_cache_keeps_long_side_at_imgsz(tmp_path):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.full((300, 400, 3), 90, np.uint8))
    s = Sample(path, [[100, 60, 200, 150]], [0], 400, 300)
    ds = DetectionDataset([s], _cfg(imgsz=64, mosaic=0.0), train=True, cache="ram")
    assert ds._ram[0].shape == (48, 64, 3)
    assert ds.estimated_cache_bytes() == 48 * 64 * 3


def test_disk_cache_reused_until_the_source_changes(tiny_samples, tmp_path):
    cache_dir = tmp_path / "cache"
    DetectionDataset(tiny_samples, _cfg(), train=True, cache="disk", cache_dir=cache_dir)
    files = sorted(cache_dir.glob("*.npy"))
    assert len(files) == 10
    stamps = {f: f.stat().st_mtime_ns for f in files}
    DetectionDataset(tiny_samples, _cfg(), train=True, cache="disk", cache_dir=cache_dir)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # reused, not rewritten
    # change one source image: only its entry is rebuilt, with the new pixels
    src = tiny_samples[0]
    new = np.full((src.height, src.width, 3), 200, np.uint8)
    cv2.imwrite(str(src.image_path), new)
    os.utime(src.image_path, ns=(1, 1))
    ds = DetectionDataset(tiny_samples, _cfg(), train=True, cache="disk", cache_dir=cache_dir)
    changed = [f for f in files if f.stat().st_mtime_ns != stamps[f]]
    assert len(changed) == 1
    assert (ds._decoded(0)[0] == 200).all()


def test_default_disk_cache_dir_beside_the_images(tiny_samples):
    ds = DetectionDataset(tiny_samples, _cfg(), train=False, cache="disk")
    expected = tiny_samples[0].image_path.parent.parent / ".detforge_cache"
    assert ds._disk_dir == expected and len(list(expected.glob("*.npy"))) == 10


def test_ram_cache_refused_with_the_numbers(tiny_samples, monkeypatch):
    monkeypatch.setattr(dataset_mod, "available_memory_bytes", lambda: 10_000)
    with pytest.raises(CacheError) as err:
        DetectionDataset(tiny_samples, _cfg(), train=False, cache="ram")
    need = sum(s.width * s.height * 3 for s in tiny_samples) / 1e9
    msg = str(err.value)
    assert f"needs {need:.2f} GB" in msg and "0.00 GB may be used" in msg and "cache=disk" in msg


def test_available_memory_reads_meminfo_and_falls_back(monkeypatch):
    import io

    meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   12345678 kB\n"
    monkeypatch.setattr(dataset_mod, "open", lambda *a, **k: io.StringIO(meminfo), raising=False)
    assert dataset_mod.available_memory_bytes() == 12345678 * 1024

    def no_proc(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(dataset_mod, "open", no_proc, raising=False)
    monkeypatch.setattr(dataset_mod.os, "sysconf", lambda name: {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}[name])
    assert dataset_mod.available_memory_bytes() == 4096000


# ---- fraction --------------------------------------------------------------------------------------
def test_fraction_subset_size_and_determinism(tiny_samples):
    for fraction, expected in ((1.0, 10), (0.5, 5), (0.25, 2), (0.01, 1)):
        subset = select_fraction(tiny_samples, fraction, seed=1)
        assert len(subset) == expected
        assert subset == select_fraction(list(reversed(tiny_samples)), fraction, seed=1)
        paths = [str(s.image_path) for s in subset]
        assert paths == sorted(paths)
    assert select_fraction(tiny_samples, 0.5, 1) != select_fraction(tiny_samples, 0.5, 2)
    ds = DetectionDataset(tiny_samples, _cfg(fraction=0.3), train=True)
    assert len(ds.samples) == 3
    assert len(DetectionDataset(tiny_samples, _cfg(fraction=0.3), train=False).samples) == 10


# ---- loader ------------------------------------------------------------------------------------------
def test_collate_and_loader_shapes(tiny_samples):
    ds = DetectionDataset(tiny_samples, _cfg(), train=True)
    images, targets, metas = collate([ds[(0, i)] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8 and images.is_contiguous()
    assert len(targets) == len(metas) == 3
    loader = build_dataloader(ds, batch_size=4, train=True, workers=0, seed=0)
    loader_set_epoch(loader, 1)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    order = [m["index"] for b in batches for m in b[2]]
    assert sorted(order) == list(range(10))
    loader_set_epoch(loader, 1)
    assert [m["index"] for b in loader for m in b[2]] == order  # same epoch, same order
    loader_set_epoch(loader, 1, start_batch=1)
    assert [m["index"] for b in loader for m in b[2]] == order[4:]  # mid-epoch resume


def test_workers_keep_freed_memory_on_glibc(tiny_samples):
    import platform
    import subprocess
    import sys

    expected = platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is expected
    if not expected:
        return
    # in a fresh process: after the first use, an 8 MB buffer (below the raised threshold) is
    # reused from the heap, so touching it again costs no page faults
    code = (
        "import resource, numpy as np\n"
        "from detforge.data.loader import retain_freed_memory\n"
        "assert retain_freed_memory()\n"
        "np.ones(8 << 20, np.uint8); f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5): np.ones(8 << 20, np.uint8)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)\n"
    )
    faults = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert faults < 200  # 1014 here without the setting (glibc raises its threshold once)


def test_distributed_sampler_shards_cover_the_epoch(tiny_samples):
    ds = DetectionDataset(tiny_samples, _cfg(), train=True)
    shards = []
    for rank in range(3):
        s = EpochSampler(ds, shuffle=True, seed=5, rank=rank, world_size=3)
        s.set_epoch(2)
        shards.append([i for _, i in s])
    assert [len(x) for x in shards] == [4, 4, 4]  # 10 padded to 12
    assert set().union(*shards) == set(range(10))
    ref = torch.utils.data.DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=True, seed=5)
    ref.set_epoch(2)
    assert shards[1] == list(ref)


def test_multi_scale_sizes_are_stride_multiples_in_range():
    for rng in (np.random.default_rng(0), random.Random(0)):
        sizes = [multi_scale_size(640, 0.5, 32, rng) for _ in range(500)]
        assert all(s % 32 == 0 and 320 <= s <= 960 for s in sizes)
        assert min(sizes) == 320 and max(sizes) == 960
    assert {multi_scale_size(640, 0.0, 32, np.random.default_rng(1)) for _ in range(20)} == {640}
    assert all(multi_scale_size(100, 0.1, 32, random.Random(i)) == 96 for i in range(20))
    assert multi_scale_size(20, 0.2, 32, random.Random(0)) == 32  # never below one stride


def test_resize_batch_scales_boxes():
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[8.0, 16.0, 32.0, 48.0]]), "labels": torch.tensor([1])}] * 2
    out, t = resize_batch(images, targets, 96)
    assert out.shape == (2, 3, 96, 96) and out.dtype == torch.uint8
    assert torch.equal(t[0]["boxes"], torch.tensor([[12.0, 24.0, 48.0, 72.0]]))
    assert torch.equal(targets[0]["boxes"], torch.tensor([[8.0, 16.0, 32.0, 48.0]]))  # inputs kept
    flat = torch.full((1, 3, 64, 64), 0.25)
    out, _ = resize_batch(flat, [{"boxes": torch.zeros(0, 4)}], 32)
    assert out.dtype == torch.float32 and torch.allclose(out, torch.full((1, 3, 32, 32), 0.25))


# ---- preview -------------------------------------------------------------------------------------------
def test_batch_preview_draws_boxes_in_class_colours(tmp_path):
    images = torch.full((5, 3, 64, 64), 100, dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[10.0, 30.0, 50.0, 60.0]]), "labels": torch.tensor([i % 2])}
               for i in range(5)]
    path = save_batch_preview(images, targets, ["cell", "blob"], tmp_path / "plots" / "b.png", max_images=4)
    grid = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert grid.shape == (128, 128, 3)  # 4 images in a 2 x 2 grid
    assert tuple(grid[45, 10]) == class_color(0)  # left edge of image 0's box
    assert tuple(grid[45, 64 + 10]) == class_color(1)  # image 1
    assert tuple(grid[20, 20]) == (100, 100, 100)  # untouched pixel


# ---- real data ----------------------------------------------------------------------------------------
def _voc_samples(root, names, count):
    ids = (root / "ImageSets/Main/train.txt").read_text().split()[:count]
    samples = []
    for i in ids:
        tree = ET.parse(root / "Annotations" / f"{i}.xml").getroot()
        boxes, labels = [], []
        for obj in tree.iter("object"):
            bb = obj.find("bndbox")
            boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(names.index(obj.find("name").text))
        size = tree.find("size")
        samples.append(Sample(root / "JPEGImages" / f"{i}.jpg", np.array(boxes).reshape(-1, 4), labels,
                              int(size.find("width").text), int(size.find("height").text)))
    return samples


def test_bccd_train_batch(bccd_root, tmp_path):
    samples = _voc_samples(bccd_root, ["RBC", "WBC", "Platelets"], 8)
    cfg = TrainConfig(imgsz=160, mosaic=1.0, degrees=5.0, mixup=0.2, seed=1)
    ds = DetectionDataset(samples, cfg, train=True, cache="ram")
    loader = build_dataloader(ds, batch_size=4, train=True, workers=0, seed=1)
    images, targets, metas = next(iter(loader))
    assert images.shape == (4, 3, 160, 160)
    for t in targets:
        b = t["boxes"]
        assert len(b) > 0 and (b >= 0).all() and (b <= 160).all()
        assert ((b[:, 2] - b[:, 0]) >= cfg.min_box_size).all()
    assert save_batch_preview(images, targets, ["RBC", "WBC", "Platelets"], tmp_path / "p.png").is_file()


def test_decoded_image_store_does_not_change_samples(tiny_samples):
    """The store of recently decoded images (mosaic partners) is a cache only: with it, without
    it and with cache=ram, every training item over two epochs is identical."""
    cfg = _cfg(mosaic=1.0, mixup=0.5)
    with_store = DetectionDataset(tiny_samples, cfg, train=True)
    assert with_store._recent is not None
    without = DetectionDataset(tiny_samples, cfg, train=True)
    without._recent = None
    ram = DetectionDataset(tiny_samples, cfg, train=True, cache="ram")
    for epoch in (0, 1):
        for i in range(len(tiny_samples)):
            a = with_store[(epoch, i)]
            _equal_items(a[:2], without[(epoch, i)][:2])
            _equal_items(a[:2], ram[(epoch, i)][:2])


def test_reduced_jpeg_decode_keeps_orientation_and_original_size(tmp_path):
    import cv2
    from PIL import Image

    from detforge.data.image_io import read_image_for_size

    path = tmp_path / "big.jpg"
    pixels = np.zeros((1400, 2600, 3), np.uint8)
    pixels[:, :1300] = (255, 0, 0)  # left half red as stored; EXIF 6 turns it to the top half
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif, quality=95)
    small, orig = read_image_for_size(path, 640)
    assert orig == (2600, 1400)  # displayed (h, w) of the original
    assert small.shape[:2] == (650, 350)  # 1/4 scale, never below the asked long side
    assert small[:300, :, 0].mean() > 200 and small[-300:, :, 0].mean() < 50
    full = cv2.resize(read_image_for_size(path, None)[0], (350, 650), interpolation=cv2.INTER_AREA)
    assert np.abs(full.astype(int) - small.astype(int)).mean() < 8
