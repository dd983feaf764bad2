"""``d2 weights list | fetch | check`` against a real HTTP server on 127.0.0.1.

The server is written here (http.server with Range / If-Range / ETag support) and serves
the built-in checkpoint under the official names. It can cut a response after some bytes
(the connection closes mid-file), ignore Range, or serve another file than before.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from d2cli.errors import BadCheckpoint, DownloadFailed, OutputLocked, UnknownModel
from d2cli.model import read_state_dict
from d2cli.weights import check_weights, list_models, resolve_model
from d2cli.weights.fetch import ensure_model, fetch_model

BUILTIN = resolve_model("hed-vgg16").path


class Handler(BaseHTTPRequestHandler):
    server: WeightsServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range"), self.headers.get("If-Range")))
        body = srv.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        etag = '"' + hashlib.sha1(body).hexdigest() + '"'
        start = 0
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        if rng and not srv.ignore_range and (if_range is None or if_range == etag):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", etag)
        self.end_headers()
        cut = srv.cut_once.pop(self.path.lstrip("/"), None)
        if cut is not None:  # announce everything, send part, hang up
            self.wfile.write(body[start:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


class WeightsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.ignore_range = False
        self.log: list[tuple[str, str | None, str | None]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/d2"


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = WeightsServer()
    srv.files["d2/d2_tf.pth"] = BUILTIN.read_bytes()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("D2CLI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("D2CLI_WEIGHTS_URL", srv.base)
    yield srv
    srv.shutdown()
    srv.server_close()


def cache(tmp_path: Path) -> Path:
    return tmp_path / "home" / "weights"


def other_checkpoint() -> bytes:
    """A different valid checkpoint: the built-in one with conv1_1 scaled."""
    import io

    state = read_state_dict(BUILTIN)
    state["dense_feature_extraction.model.0.weight"] *= 2
    buf = io.BytesIO()
    torch.save({"model": OrderedDict((k, v.half()) for k, v in state.items())}, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- fetch
def test_fetch_verifies_records_and_serves_model(server, tmp_path, d2):
    body = server.files["d2/d2_tf.pth"]
    sha = hashlib.sha256(body).hexdigest()
    proc = d2("weights", "fetch", "d2_tf")
    assert proc.returncode == 0, proc.stderr
    assert sha in proc.stdout
    final = cache(tmp_path) / "d2_tf.pth"
    assert final.read_bytes() == body
    record = json.loads((cache(tmp_path) / "d2_tf.pth.json").read_text())
    assert record["sha256"] == sha and record["size"] == len(body)
    assert record["url"] == f"{server.base}/d2_tf.pth"
    assert sorted(p.name for p in cache(tmp_path).iterdir()) == ["d2_tf.pth", "d2_tf.pth.json"]

    # --model d2_tf now resolves to the cached file; a second fetch downloads nothing
    assert resolve_model("d2_tf").path == final
    requests = len(server.log)
    proc = d2("weights", "fetch", "d2_tf", "--json")
    assert json.loads(proc.stdout)["downloaded"] is False and len(server.log) == requests

    listed = {e["name"]: e for e in json.loads(d2("weights", "list", "--json",
                                                  check=True).stdout)["models"]}
    assert listed["d2_tf"]["available"] and listed["d2_tf"]["sha256"] == sha
    assert listed["d2_tf"]["recorded_sha256"] == sha
    assert not listed["d2_ots"]["available"] and listed["hed-vgg16"]["kind"] == "built-in"

    proc = d2("weights", "check", "d2_tf", "--json", check=True)
    s = json.loads(proc.stdout)
    assert s["record"] == "matches" and s["parameters"] == 7_635_264 and s["tensors"] == 20
    assert s["known_as"] == ["hed-vgg16", "d2_tf"]  # the server sent the built-in's bytes


def test_interrupted_transfer_resumes_on_the_next_fetch(server, tmp_path, d2):
    body = server.files["d2/d2_tf.pth"]
    cut = len(body) * 2 // 5
    server.cut_once["d2/d2_tf.pth"] = cut
    proc = d2("weights", "fetch", "d2_tf", "--retries", "0", "-q")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "d2 weights fetch d2_tf" in err and "resume" in err
    assert not (cache(tmp_path) / "d2_tf.pth").exists()
    assert (cache(tmp_path) / "d2_tf.pth.part").stat().st_size == cut
    listed = {e.name: e for e in list_models()}
    assert listed["d2_tf"].partial_bytes == cut and not listed["d2_tf"].available
    with pytest.raises(UnknownModel, match="d2 weights fetch d2_tf"):
        resolve_model("d2_tf")  # a partial download is never used

    proc = d2("weights", "fetch", "d2_tf", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["resumed_from"] == cut and s["restarts"] == 0
    assert server.log[-1][1] == f"bytes={cut}-" and server.log[-1][2] is not None
    assert (cache(tmp_path) / "d2_tf.pth").read_bytes() == body
    assert sorted(p.name for p in cache(tmp_path).iterdir()) == ["d2_tf.pth", "d2_tf.pth.json"]


def test_retries_within_one_run(server, tmp_path):
    body = server.files["d2/d2_tf.pth"]
    server.cut_once["d2/d2_tf.pth"] = 12345
    seen = []
    res = fetch_model("d2_tf", retries=2, progress=lambda e: seen.append(e.done))
    assert res.attempts == 2 and res.sha256 == hashlib.sha256(body).hexdigest()
    assert [r for _, r, _ in server.log] == [None, "bytes=12345-"]
    assert seen[-1] == len(body) and 12345 in seen
    assert res.path.read_bytes() == body


def test_changed_server_file_or_ignored_range_restarts_cleanly(server, tmp_path):
    server.cut_once["d2/d2_tf.pth"] = 500_000
    with pytest.raises(DownloadFailed, match="stopped at 500000 bytes"):
        fetch_model("d2_tf", retries=0)
    new = other_checkpoint()
    server.files["d2/d2_tf.pth"] = new  # another ETag: If-Range makes the server resend all
    res = fetch_model("d2_tf", retries=0)
    assert res.restarts == 1 and res.resumed_from == 0
    assert res.path.read_bytes() == new  # not old bytes spliced with new ones

    server.cut_once["d2/d2_ots.pth"] = 300_000
    server.files["d2/d2_ots.pth"] = new
    with pytest.raises(DownloadFailed):
        fetch_model("d2_ots", retries=0)
    server.ignore_range = True
    res = fetch_model("d2_ots", retries=0)
    assert res.restarts == 1 and res.path.read_bytes() == new


@pytest.mark.parametrize("kind", ["garbage", "truncated", "nan", "sha"])
def test_corrupt_downloads_are_refused_and_leave_nothing(server, tmp_path, kind, d2):
    body = server.files["d2/d2_tf.pth"]
    if kind == "garbage":
        server.files["d2/d2_tf.pth"] = os.urandom(100_000)
    elif kind == "truncated":  # the server itself has a short file: no transfer error
        server.files["d2/d2_tf.pth"] = body[: len(body) // 2]
    elif kind == "nan":
        state = read_state_dict(BUILTIN)
        state["dense_feature_extraction.model.21.bias"][3] = float("nan")
        path = tmp_path / "nan.pth"
        torch.save({"model": state}, path)
        server.files["d2/d2_tf.pth"] = path.read_bytes()
    args = ["weights", "fetch", "d2_tf", "-q"]
    if kind == "sha":
        args += ["--sha256", "0" * 64]
    proc = d2(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert ("sha256" if kind == "sha" else "not a valid D2-Net checkpoint") in proc.stderr
    assert [p.name for p in cache(tmp_path).iterdir()] == []


def test_fetch_errors(server, tmp_path, d2):
    proc = d2("weights", "fetch", "d2_tf", "--url", f"{server.base}/missing.pth")
    assert proc.returncode == 2 and "HTTP 404" in proc.stderr
    for name, msg in (("hed-vgg16", "built into"), ("nope", "pass --url"),
                      ("../evil", "letters, digits")):
        proc = d2("weights", "fetch", name)
        assert proc.returncode == 2 and msg in proc.stderr, proc.stderr
    # any name with --url: lands in the cache and resolves like a registry model
    proc = d2("weights", "fetch", "mine", "--url", f"{server.base}/d2_tf.pth")
    assert proc.returncode == 0, proc.stderr
    assert resolve_model("mine").path == cache(tmp_path) / "mine.pth"
    assert {e.name: e.kind for e in list_models()}["mine"] == "cached"


def test_one_fetch_at_a_time(server, tmp_path):
    cache(tmp_path).mkdir(parents=True)
    fd = os.open(cache(tmp_path) / "d2_tf.pth.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OutputLocked, match="another d2 process"):
            fetch_model("d2_tf")
    finally:
        os.close(fd)
    assert not (cache(tmp_path) / "d2_tf.pth").exists()


def test_missing_model_needs_fetch(server, tmp_path):
    with pytest.raises(UnknownModel, match="d2 weights fetch d2_tf"):
        ensure_model("d2_tf")
    assert server.log == []  # no surprise download
    info = ensure_model("d2_tf", fetch=True)
    assert info.path == cache(tmp_path) / "d2_tf.pth" and len(server.log) == 1


# --------------------------------------------------------------------------- check
def test_check_describes_and_refuses(tmp_path, d2):
    state = read_state_dict(BUILTIN)
    torch.save({k.replace("dense_feature_extraction.", ""): v for k, v in state.items()},
               tmp_path / "short.pth")
    res = check_weights(tmp_path / "short.pth")
    assert res.layout.startswith("bare") and "no dense_feature_extraction" in res.layout
    assert res.dtypes == ["float32"] and res.known_as == [] and res.record is None
    assert [la["layer"] for la in res.layers][-1] == "conv4_3"
    assert check_weights(BUILTIN).known_as == ["hed-vgg16"]

    proc = d2("weights", "check", tmp_path / "short.pth")
    assert proc.returncode == 0 and "7,635,264" in proc.stdout
    (tmp_path / "junk.pth").write_bytes(b"junk" * 100)
    proc = d2("weights", "check", tmp_path / "junk.pth")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    proc = d2("weights", "check", tmp_path / "absent.pth")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    with pytest.raises(BadCheckpoint):
        check_weights(tmp_path / "junk.pth")
