"""Instance outlines as the readers find them: checked, clipped to the image, reported.

Readers hand each object's rings (absolute pixels, float [K, 2]) to ``clean_outline``, which
returns the usable rings and logs one problem per faulty ring with the file and the object:
``bad_polygon`` (fewer than 3 points, NaN/inf, no area: the ring is dropped) and
``out_of_range_polygon`` (a ring reaching more than ``EDGE_TOLERANCE_PX`` outside the image:
clipped to it, or dropped when nothing is left). An object that loses every ring keeps its
box without an outline. Self-crossing rings are kept (they still rasterise) and reported by
``detforge data check``, which tests every ring (an O(K^2) test, too slow for every read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detforge.data.formats.common import EDGE_TOLERANCE_PX, ProblemLog
from detforge.data.polygons import clip_ring, ring_is_flat


def clean_outline(rings: list[np.ndarray], width: int, height: int, source: Path, log: ProblemLog,
                  where: str) -> list[np.ndarray]:
    """Usable rings of one object (float32 [K, 2], inside the image); problems logged."""
    out = []
    image = (0.0, 0.0, float(width), float(height))
    for j, ring in enumerate(rings):
        ring = np.asarray(ring, np.float64).reshape(-1, 2)
        desc = f"{where}: polygon {j}" if len(rings) > 1 else f"{where}: polygon"
        if not np.isfinite(ring).all():
            log.add(source, "bad_polygon", f"{desc} has NaN/inf coordinates; dropped")
            continue
        if len(ring) < 3:
            log.add(source, "bad_polygon", f"{desc} has {len(ring)} point{'s' * (len(ring) != 1)} "
                                           "(a polygon needs 3); dropped")
            continue
        reach = max(float(-ring.min()), float((ring - [width, height]).max()), 0.0)
        clipped = clip_ring(ring, image) if reach > 0 else ring
        if clipped is None or ring_is_flat(clipped):
            why = f"lies outside the {width}x{height} image" if reach > EDGE_TOLERANCE_PX else "encloses no area"
            log.add(source, "out_of_range_polygon" if reach > EDGE_TOLERANCE_PX else "bad_polygon",
                    f"{desc} {why}; dropped")
            continue
        if reach > EDGE_TOLERANCE_PX:
            log.add(source, "out_of_range_polygon",
                    f"{desc} reaches {reach:.1f} px outside the {width}x{height} image; clipped")
        out.append(clipped.astype(np.float32))
    if rings and not out:
        log.add(source, "bad_polygon", f"{where}: no usable polygon left; the object keeps its box without an outline")
    return out



def coco_segmentation_rings(seg, width: int, height: int, source: Path, log: ProblemLog,
                            where: str) -> list[np.ndarray]:
    """A COCO ``segmentation`` as rings in absolute pixels (unchecked; see ``clean_outline``).

    Polygons (``[[x1, y1, x2, y2, ...], ...]``) give one ring each. RLE (``{"size": [h, w],
    "counts": ...}``, compressed or not) is decoded with faster-coco-eval's pycocotools-compatible
    mask utilities and traced into rings that rasterise back to the same mask
    (``detforge.data.polygons.mask_to_rings``). Anything else is reported and gives no ring.
    """
    if seg is None or (isinstance(seg, list) and not seg):
        return []
    if isinstance(seg, list):
        rings = []
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly) or len(poly) % 2:
                log.add(source, "bad_polygon", f"{where}: segmentation polygon {j} is not a flat list of x, y "
                                               "numbers; dropped")
                continue
            rings.append(np.asarray(poly, np.float64).reshape(-1, 2))
        return rings
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        from faster_coco_eval.core import mask as coco_mask

        try:
            h, w = (int(v) for v in seg["size"])
            rle = coco_mask.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            mask = coco_mask.decode(rle)
        except (TypeError, ValueError) as e:
            log.add(source, "bad_polygon", f"{where}: segmentation RLE cannot be decoded ({e}); dropped")
            return []
        if (w, h) != (width, height):
            log.add(source, "bad_polygon", f"{where}: segmentation RLE is {w}x{h} but the image is "
                                           f"{width}x{height}; dropped")
            return []
        from detforge.data.polygons import mask_to_rings

        return mask_to_rings(mask.reshape(h, w))
    log.add(source, "bad_polygon", f"{where}: segmentation {str(seg)[:40]!r} is neither polygons nor RLE; dropped")
    return []
