"""The local cache of published weights: one folder, a file per published name, a sidecar
record per file, and downloads through torch.hub's ``download_url_to_file``.

A file is handed out only when it is whole and unaltered:

- torch.hub writes to a temporary ``.partial`` file and renames it when the transfer ends,
  and checks the sha256 prefix the publisher puts in the file name (torchvision, timm, effdet);
- Python's HTTP client ends a read at a closed connection without an error even when fewer
  bytes arrived than announced, so the size announced by the server is compared with the
  size received before the file takes its final name;
- when the publisher gives no hash (D-FINE, Darknet), the size and sha256 are recorded in
  ``FILE.json`` beside the file at first download (or at first use of a file placed by hand)
  and every later use checks them: a file that changed is refused, removed and downloaded again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from detforge.errors import CheckpointError
from detforge.hub.table import PublishedWeights

LOG = logging.getLogger("detforge")
PROBE_TIMEOUT_S = 30


class WeightsUnavailableError(CheckpointError):
    """Published weights that could not be downloaded or failed their check; the message names
    the URL and the path where a copy downloaded by hand goes."""


def weights_dir() -> Path:
    """``$DETFORGE_HOME/weights``, else the platform's cache folder + ``detforge/weights``
    (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
    ``%LOCALAPPDATA%`` on Windows)."""
    home = os.environ.get("DETFORGE_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.expanduser() / "detforge" / "weights"


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def record(path: Path, entry: PublishedWeights, how: str) -> dict[str, Any]:
    data = {"url": entry.url, "size": path.stat().st_size, "sha256": sha256_of(path), "how": how,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_json_atomic(sidecar_path(path), data)
    return data


def check_cached(path: Path, entry: PublishedWeights) -> str | None:
    """None when ``path`` is the published file as far as can be told, else what is wrong."""
    size = path.stat().st_size
    prefix = entry.sha256_prefix
    if prefix:
        digest = sha256_of(path)
        if not digest.startswith(prefix):
            return f"its sha256 {digest[:16]}... does not start with the published prefix {prefix}"
        return None
    side = sidecar_path(path)
    if not side.is_file():
        return None  # placed by hand: recorded on this first use
    try:
        rec = json.loads(side.read_text())
        want_size, want_sha = int(rec["size"]), str(rec["sha256"])
    except (ValueError, KeyError, TypeError):
        return f"its record {side} is unreadable"
    if size != want_size:
        return f"it has {size} bytes, {want_size} were recorded at first download ({side})"
    digest = sha256_of(path)
    if digest != want_sha:
        return f"its sha256 {digest[:16]}... differs from the one recorded at first download ({side})"
    return None


def announced_size(url: str) -> int | None:
    """The size the server announces for ``url`` (a HEAD request; None when it announces none).
    Connection failures propagate: they are the offline case."""
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "detforge"})
    try:
        with urllib.request.urlopen(req, timeout=PROBE_TIMEOUT_S) as r:
            length = r.headers.get("Content-Length")
    except urllib.error.HTTPError as e:
        if e.code in (403, 405, 501):  # servers that refuse HEAD: the GET decides
            return None
        raise
    return int(length) if length and length.isdigit() else None


def _by_hand(entry: PublishedWeights, path: Path) -> str:
    return f"download {entry.url} by hand and place it at {path}"


def fetch(model: str, entry: PublishedWeights, progress: bool = True) -> Path:
    """The local path of ``entry``: the cached file when it passes its check, else a fresh
    download. Raises WeightsUnavailableError (one line: URL, reason, where to put the file)."""
    folder = weights_dir()
    path = folder / entry.filename
    if path.is_file():
        problem = check_cached(path, entry)
        if problem is None:
            if not sidecar_path(path).is_file():
                record(path, entry, "found in the cache (placed by hand); recorded at first use")
            LOG.info("pretrained %s %s: %s (cached)", model, entry.name, path)
            return path
        LOG.warning("%s: %s; it is not loaded: removed, downloading it again", path, problem)
        path.unlink()
        sidecar_path(path).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".download")
    LOG.info("pretrained %s %s: downloading %s -> %s", model, entry.name, entry.url, path)
    try:
        expected = announced_size(entry.url)
        # torch.hub: progress bar, temporary .partial file renamed at the end, sha256 prefix check
        from torch.hub import download_url_to_file

        download_url_to_file(entry.url, str(staging), hash_prefix=entry.sha256_prefix, progress=progress)
    except RuntimeError as e:  # torch.hub's hash check
        raise WeightsUnavailableError(
            f"{entry.url}: the downloaded file does not match the publisher's sha256 prefix "
            f"{entry.sha256_prefix} ({e}); it was discarded and nothing was loaded; retry, or {_by_hand(entry, path)}"
        ) from None
    except urllib.error.HTTPError as e:
        raise WeightsUnavailableError(f"{entry.url}: the server answered HTTP {e.code} {e.reason}; "
                                      f"{_by_hand(entry, path)}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsUnavailableError(
            f"cannot download {entry.url} ({type(reason).__name__}: {reason}); without network, "
            f"{_by_hand(entry, path)}"
        ) from None
    got = staging.stat().st_size
    if expected is not None and got != expected:
        staging.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"{entry.url}: the transfer broke off after {got} of {expected} bytes; the partial file was "
            f"discarded and nothing was loaded; retry, or {_by_hand(entry, path)}"
        )
    os.replace(staging, path)
    record(path, entry, "downloaded")
    return path
