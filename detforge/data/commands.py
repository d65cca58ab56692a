"""`detforge data check|convert`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from detforge.config import ConfigError, action_options

LOG = logging.getLogger("detforge")


def _need(args: dict[str, Any], key: str, example: str) -> Any:
    if args.get(key) in (None, ""):
        raise ConfigError(f"missing {key}= (e.g. {key}={example})")
    return args[key]


def data_command(action: str, args: dict[str, Any]) -> int:
    from detforge.data.formats import load_dataset

    defaults = {"check": {"data": None, "tiny": 4.0, "out": None},
                "convert": {"data": None, "to": None, "out": None, "link": False}}
    if action not in defaults:
        raise ConfigError(f"unknown data action '{action}'; allowed: check, convert")
    args = action_options(f"data {action}", args, defaults[action])
    if action == "check":
        from detforge.data.check import check_dataset

        data = load_dataset(args.get("data"))
        report = check_dataset(data, tiny=float(args.get("tiny", 4.0)))
        print(report.format())
        if args.get("out"):
            report.write_json(Path(args["out"]))
        # like a linter: problems (bad files or boxes, duplicates, leaks across splits) exit 1,
        # so a script or CI step can stop on a dataset that needs attention
        return 1 if (report.problems or report.duplicates or report.leaks) else 0
    if action == "convert":
        src = _need(args, "data", "path/to/dataset")
        to = _need(args, "to", "yolo")
        out = _need(args, "out", "converted")
        from detforge.data.formats import write_dataset

        data = load_dataset(src)
        path = write_dataset(data, Path(out), to, link=bool(args.get("link", False)))
        print(f"wrote {to} dataset to {path}")
        if data.problems:  # what the reader dropped or repaired is not in the output: say so
            from detforge.data.check import describe_problems

            print(describe_problems(data.problems, data.root, str(src), first=10))
        return 0
