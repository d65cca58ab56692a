"""Benchmark tables: printed as markdown and written as .csv and .md side by side."""

from __future__ import annotations

import csv
from pathlib import Path


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec) triples."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    body = ["| " + " | ".join(format(r[k], f) if f else str(r[k]) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_report(rows: list[dict], columns: list[tuple[str, str, str]], out_dir: Path, stem: str, title: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    (out_dir / f"{stem}.md").write_text(f"{title}\n\n{table}\n")
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [k for k, _, _ in columns])
        writer.writeheader()
        writer.writerows(rows)
    return table
