"""`detforge data check|convert|split`."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from detforge.config import ConfigError

LOG = logging.getLogger("detforge")


def _need(args: dict[str, Any], key: str, example: str) -> Any:
    if args.get(key) in (None, ""):
        raise ConfigError(f"missing {key}= (e.g. {key}={example})")
    return args[key]


def data_command(action: str, args: dict[str, Any]) -> int:
    from detforge.data.formats import convert_dataset, load_dataset

    known = {"check": {"data", "tiny", "out"}, "convert": {"data", "to", "out", "link"},
             "split": {"data", "ratios", "seed", "out"}}
    if action not in known:
        raise ConfigError(f"unknown data action '{action}'; allowed: check, convert, split")
    extra = set(args) - known[action]
    if extra:
        raise ConfigError(f"data {action}: unknown keys {sorted(extra)}; allowed: {sorted(known[action])}")
    if action == "check":
        from detforge.data.check import check_dataset

        data = load_dataset(args.get("data"))
        report = check_dataset(data, tiny=float(args.get("tiny", 4.0)))
        print(report.format())
        if args.get("out"):
            Path(args["out"]).write_text(json.dumps(report.as_dict(), indent=2, default=str))
        return 0
    if action == "convert":
        src = _need(args, "data", "path/to/dataset")
        to = _need(args, "to", "yolo")
        out = _need(args, "out", "converted")
        path = convert_dataset(src, to, Path(out))
        print(f"wrote {to} dataset to {path}")
        return 0
    # split: pool every image of the dataset and write seed-000 style CSV split lists
    data = load_dataset(_need(args, "data", "path/to/dataset"))
    ratios = [float(r) for r in str(args.get("ratios", "0.8,0.2")).split(",")]
    if not 0.999 <= sum(ratios) <= 1.001 or len(ratios) not in (2, 3):
        raise ConfigError(f"ratios={args.get('ratios')}: give 2 or 3 fractions summing to 1, e.g. 0.8,0.1,0.1")
    samples = sorted({s.image_path: s for split in data.splits.values() for s in split}.values(), key=lambda s: str(s.image_path))
    order = np.random.default_rng(int(args.get("seed", 0))).permutation(len(samples))
    out = Path(args.get("out") or data.root)
    out.mkdir(parents=True, exist_ok=True)
    names = ["train", "val", "test"][: len(ratios)]
    bounds = np.round(np.cumsum([0.0, *ratios]) * len(samples)).astype(int)
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image"])
            for i in order[lo:hi]:
                w.writerow([str(samples[i].image_path)])
        print(f"{name}: {hi - lo} images -> {out / (name + '.csv')}")
    return 0
