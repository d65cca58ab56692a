"""Published weights by name: a real HTTP server on 127.0.0.1 stands in for the publishers (the
table's URL is pointed at it), so the download path, the cache and every failure are exercised
for real; no test reaches the internet."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from log_helpers import detforge_log

from detforge.hub import PUBLISHED, WeightsUnavailableError, find_published, resolve_pretrained, weights_dir
from detforge.hub.store import sidecar_path


class Publisher:
    """Files served by path; ``truncate`` paths announce 100 bytes more than they send and close."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.url = ""


@pytest.fixture
def publisher():
    pub = Publisher()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def _answer(self, body_too: bool) -> None:
            pub.requests.append((self.command, self.path))
            body = pub.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) + (100 if self.path in pub.truncate else 0)))
            self.end_headers()
            if body_too:
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True  # HTTP/1.0: the connection ends here, short of the announced size

        def do_HEAD(self):
            self._answer(False)

        def do_GET(self):
            self._answer(True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    pub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield pub
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DETFORGE_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights"


def _serve(monkeypatch, pub: Publisher, model: str, name: str, body: bytes, filename: str | None = None):
    """Point the table entry (model, name) at ``pub``; returns the patched entry."""
    entry = find_published(model, name)
    filename = filename or entry.filename
    patched = dataclasses.replace(entry, url=f"{pub.url}/files/{filename}")
    monkeypatch.setitem(PUBLISHED, model, tuple(patched if e.name == name else e for e in PUBLISHED[model]))
    pub.files[f"/files/{filename}"] = body
    return patched


def _weights_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(seed))}}, buf)
    return buf.getvalue()


def test_cache_folder_follows_detforge_home(cache):
    assert weights_dir() == cache


def test_download_with_progress_then_cache_hit(publisher, monkeypatch, cache, capfd):
    body = _weights_bytes()
    _serve(monkeypatch, publisher, "dfine-n", "coco", body)
    path = Path(resolve_pretrained("dfine-n", "coco"))
    assert path == cache / "dfine_n_coco.pth"
    assert path.read_bytes() == body
    assert publisher.requests == [("HEAD", "/files/dfine_n_coco.pth"), ("GET", "/files/dfine_n_coco.pth")]
    err = capfd.readouterr().err
    assert "100%" in err  # torch.hub's progress bar ran to the end
    # D-FINE publishes no hash: the size and sha256 are recorded at the first download
    record = json.loads(sidecar_path(path).read_text())
    assert record["size"] == len(body) == path.stat().st_size
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert record["url"].endswith("/files/dfine_n_coco.pth")
    assert sorted(p.name for p in cache.iterdir()) == ["dfine_n_coco.pth", "dfine_n_coco.pth.json"]

    again = resolve_pretrained("dfine-n", "coco")
    assert Path(again) == path
    assert len(publisher.requests) == 2  # the cache answered: no request at all


def test_truncated_transfer_is_detected_and_nothing_is_kept(publisher, monkeypatch, cache):
    body = _weights_bytes()
    entry = _serve(monkeypatch, publisher, "dfine-n", "coco", body)
    publisher.truncate.add("/files/dfine_n_coco.pth")
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_pretrained("dfine-n", "coco", progress=False)
    msg = str(err.value)
    assert f"broke off after {len(body)} of {len(body) + 100} bytes" in msg
    assert entry.url in msg and str(cache / "dfine_n_coco.pth") in msg and "\n" not in msg
    assert list(cache.iterdir()) == []  # no final file, no partial file, no record

    publisher.truncate.clear()  # the next attempt succeeds and records the whole file
    path = Path(resolve_pretrained("dfine-n", "coco", progress=False))
    assert path.read_bytes() == body


def test_hash_prefix_in_the_file_name_is_checked(publisher, monkeypatch, cache):
    # effdet names its files NAME-<sha256 prefix>.pth; these bytes do not hash to f153e0cf
    entry = _serve(monkeypatch, publisher, "efficientdet-d0", "coco", _weights_bytes())
    assert entry.sha256_prefix == "f153e0cf"
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_pretrained("efficientdet-d0", "coco", progress=False)
    assert "sha256 prefix f153e0cf" in str(err.value) and "nothing was loaded" in str(err.value)
    assert list(cache.iterdir()) == []


def test_a_matching_hash_prefix_passes(publisher, monkeypatch, cache):
    body = _weights_bytes(1)
    prefix = hashlib.sha256(body).hexdigest()[:8]
    _serve(monkeypatch, publisher, "efficientdet-d0", "coco", body, filename=f"tf_efficientdet_d0_34-{prefix}.pth")
    path = Path(resolve_pretrained("efficientdet-d0", "coco", progress=False))
    assert path.name == f"tf_efficientdet_d0_34-{prefix}.pth" and path.read_bytes() == body


def test_a_cached_file_that_changed_is_never_loaded(publisher, monkeypatch, cache):
    body = _weights_bytes()
    _serve(monkeypatch, publisher, "dfine-n", "coco", body)
    path = Path(resolve_pretrained("dfine-n", "coco", progress=False))
    damaged = bytearray(body)
    damaged[len(body) // 2] ^= 0xFF  # same size, one byte flipped
    path.write_bytes(bytes(damaged))
    with detforge_log() as log:
        again = Path(resolve_pretrained("dfine-n", "coco", progress=False))
    assert any("differs from the one recorded at first download" in line and "it is not loaded" in line for line in log)
    assert again.read_bytes() == body
    assert len(publisher.requests) == 4  # downloaded a second time

    path.write_bytes(body[:-10])  # cut short
    with detforge_log() as log:
        resolve_pretrained("dfine-n", "coco", progress=False)
    assert any(f"it has {len(body) - 10} bytes, {len(body)} were recorded" in line for line in log)
    assert path.read_bytes() == body


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_message_names_the_url_and_the_path(monkeypatch, cache):
    entry = find_published("dfine-s", "obj2coco")
    url = f"http://127.0.0.1:{_closed_port()}/dfine_s_obj2coco.pth"
    monkeypatch.setitem(PUBLISHED, "dfine-s", tuple(dataclasses.replace(e, url=url) if e is entry else e
                                                    for e in PUBLISHED["dfine-s"]))
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_pretrained("dfine-s", "obj2coco")
    msg = str(err.value)
    assert msg.startswith(f"cannot download {url} (")
    assert msg.endswith(f"download {url} by hand and place it at {cache / 'dfine_s_obj2coco.pth'}")
    assert "\n" not in msg


def test_offline_cli_exits_with_one_line(monkeypatch, cache, capsys):
    from detforge.cli import main

    url = f"http://127.0.0.1:{_closed_port()}/dfine_n_coco.pth"
    monkeypatch.setitem(PUBLISHED, "dfine-n", tuple(dataclasses.replace(e, url=url) for e in PUBLISHED["dfine-n"]))
    code = main(["train", "model=dfine-n", "pretrained=coco", "device=cpu", "epochs=1"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1
    assert url in err and str(cache / "dfine_n_coco.pth") in err


def test_a_file_placed_by_hand_is_used_offline_and_recorded(monkeypatch, cache):
    body = _weights_bytes(2)
    cache.mkdir(parents=True)
    (cache / "yolov3-tiny.weights").write_bytes(body)
    url = f"http://127.0.0.1:{_closed_port()}/yolov3-tiny.weights"
    monkeypatch.setitem(PUBLISHED, "yolov3-tiny", tuple(dataclasses.replace(e, url=url) for e in PUBLISHED["yolov3-tiny"]))
    path = Path(resolve_pretrained("yolov3-tiny", "coco"))
    assert path == cache / "yolov3-tiny.weights"
    record = json.loads(sidecar_path(path).read_text())
    assert record["sha256"] == hashlib.sha256(body).hexdigest() and "by hand" in record["how"]


def test_paths_keep_working_and_unknown_names_say_what_exists(tmp_path):
    own = tmp_path / "mine.pth"
    own.write_bytes(b"x")
    assert resolve_pretrained("dfine-n", str(own)) == str(own)
    assert resolve_pretrained("dfine-n", None) is None
    with pytest.raises(FileNotFoundError, match="pretrained=missing/w.pth: file not found"):
        resolve_pretrained("dfine-n", "missing/w.pth")
    with pytest.raises(ValueError, match="dfine-s has published weights named: coco, obj2coco, obj365"):
        resolve_pretrained("dfine-s", "objects")
    with pytest.raises(ValueError, match="fcos-n has no published weights"):
        resolve_pretrained("fcos-n", "coco")


def test_detector_hands_the_downloaded_file_to_the_weights_loader(publisher, monkeypatch, cache):
    """pretrained=NAME ends where pretrained=PATH starts: every tensor of a served fcos-n state
    dict is loaded into a fresh fcos-n."""
    from detforge.api import Detector
    from detforge.models.zoo import build_model
    from detforge.hub.table import PublishedWeights

    source = build_model("fcos-n", 3)
    buf = io.BytesIO()
    torch.save({"model": source.state_dict()}, buf)
    entry = PublishedWeights("coco", f"{publisher.url}/files/fcos_n_test.pth", "test", "test", "test")
    monkeypatch.setitem(PUBLISHED, "fcos-n", (entry,))
    publisher.files["/files/fcos_n_test.pth"] = buf.getvalue()
    det = Detector("fcos-n", num_classes=3, pretrained="coco")
    assert det.pretrained == str(cache / "fcos_n_test.pth")
    report = det.model.load_report
    assert report["loaded"] == report["total"] > 100
    for k, v in source.state_dict().items():
        assert torch.equal(det.model.state_dict()[k], v), k


# ------------------------------------------------------------------ the table itself
def test_torchvision_rows_match_torchvision_weight_enums():
    from torchvision.models import detection as d

    enums = {"faster-rcnn-r50": d.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
             "mask-rcnn-r50": d.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
             "faster-rcnn-mbv3": d.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1}
    for model, weights in enums.items():
        entry = find_published(model, "coco")
        assert entry.url == weights.url, model
        assert entry.coco_ap == weights.meta["_metrics"]["COCO-val2017"]["box_map"], model
        assert entry.params_m == pytest.approx(weights.meta["num_params"] / 1e6, abs=1e-6), model
        assert entry.file_mb == pytest.approx(weights.meta["_file_size"]), model
        assert entry.sha256_prefix and entry.sha256_prefix in weights.url


def test_efficientnet_backbone_rows_match_timm():
    from timm.models import get_pretrained_cfg

    for d in range(4):
        entry = find_published(f"efficientdet-d{d}", "imagenet")
        assert entry.part == "backbone"
        assert entry.url == get_pretrained_cfg(f"tf_efficientnet_b{d}").url  # timm's default tag


def test_every_dfine_size_has_its_official_names_and_models_lists_them(capsys):
    from detforge.cli import main
    from detforge.models.zoo import available

    for size in "nsmlx":
        assert f"dfine-{size}" in available()
        names = [e.name for e in PUBLISHED[f"dfine-{size}"]]
        assert names == (["coco"] if size == "n" else ["coco", "obj2coco", "obj365"])
    assert find_published("dfine-l", "obj2coco").filename == "dfine_l_obj2coco_e25.pth"
    assert find_published("dfine-x", "coco").coco_ap == 55.8
    assert main(["models"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("dfine-s "))
    assert line.endswith("[pretrained: coco, obj2coco, obj365]")
