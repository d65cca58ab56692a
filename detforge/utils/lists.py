"""Comma-separated values on the command line (`models=a,b`, `runs=DIR,DIR`) as Python lists."""

from __future__ import annotations

from typing import Any


def split_list(value: Any) -> list[str]:
    """"a,b" | ["a", "b"] | None -> ["a", "b"] (blank items dropped, order kept, duplicates once)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        if text and text not in out:
            out.append(text)
    return out
