"""``pretrained=`` -> a local file: a path that exists is used as it is; otherwise the value is
looked up among the weights published for the model (detforge/hub/table.py) and fetched into
the cache. Everything that loads weights afterwards sees only a path."""

from __future__ import annotations

from pathlib import Path

from detforge.hub.store import fetch
from detforge.hub.table import find_published, published_for

# values that can only mean a file (a folder in them, or a weights-file suffix)
_FILE_SUFFIXES = (".pt", ".pth", ".weights", ".bin", ".safetensors", ".ckpt")


def published_names(model: str) -> list[str]:
    return [e.name for e in published_for(model)]


def resolve_pretrained(model: str, value: str | None, progress: bool = True) -> str | None:
    """``value`` unchanged when it is empty or an existing file; the cached (downloaded if need
    be) file when it names weights published for ``model``; FileNotFoundError / ValueError
    naming what is available otherwise."""
    if value is None or str(value).strip() in ("", "None", "none", "false", "False"):
        return None
    text = str(value)
    path = Path(text).expanduser()
    if path.is_file():
        return str(path)
    model_key = str(model).lower()
    entry = find_published(model_key, text)
    if entry is not None:
        return str(fetch(model_key, entry, progress=progress))
    names = published_names(model_key)
    available = (f"{model_key} has published weights named: {', '.join(names)}" if names
                 else f"{model_key} has no published weights in detforge's table")
    if "/" in text or "\\" in text or path.suffix.lower() in _FILE_SUFFIXES or model_key.endswith(".pt"):
        raise FileNotFoundError(f"pretrained={text}: file not found ({available})")
    raise ValueError(f"pretrained={text}: not a file and not a published name; {available} "
                     "(see `detforge models`)")

