"""``d2 weights fetch``: download a checkpoint into the cache, atomically and resumably.

Files in the cache directory while and after fetching ``<name>``::

    <name>.pth.part        the bytes received so far
    <name>.pth.part.json   where they came from (URL, ETag / Last-Modified, total size), so a
                           later run resumes only the same file (HTTP Range + If-Range)
    <name>.pth.lock        one fetch of a name at a time (flock, freed by the kernel on kill)
    <name>.pth.json        the record of a finished download (URL, size, sha256, time)
    <name>.pth             appears only once complete and verified, by an atomic rename

A file that is not a D2-Net checkpoint (``read_state_dict``) or does not have the
expected sha256 is deleted: nothing of it stays in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import (
    BadCheckpoint,
    DownloadFailed,
    OutputError,
    UnknownModel,
    UsageError,
)
from ..io.atomic import write_json_atomic
from ..io.lock import exclusive_lock
from ..jobs import ProgressFn, Stage
from . import (
    KNOWN_MODELS,
    OFFICIAL_URL,
    ModelInfo,
    cache_dir,
    partial_path,
    record_path,
    resolve_model,
)

BASE_URL_ENV = "D2CLI_WEIGHTS_URL"  # replaces https://dusmanu.com/files/d2-net for mirrors/tests
CHUNK = 1 << 16
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RETRY_HTTP = (408, 429, 500, 502, 503, 504)



@dataclass
class FetchResult:
    name: str
    path: Path
    url: str
    sha256: str
    size: int
    downloaded: bool  # False: it was already in the cache
    resumed_from: int = 0  # bytes of an earlier partial download that were kept
    restarts: int = 0  # times the transfer started over from byte 0 after some bytes
    attempts: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "url": self.url,
                "sha256": self.sha256, "size": self.size, "downloaded": self.downloaded,
                "resumed_from": self.resumed_from, "restarts": self.restarts,
                "attempts": self.attempts, "seconds": round(self.seconds, 3)}


class _Interrupted(Exception):
    """A transfer that stopped early; worth another attempt (with Range)."""


def model_url(name: str, url: str | None = None) -> str:
    """The URL ``name`` is fetched from: ``url``, else $D2CLI_WEIGHTS_URL or the official host."""
    if url:
        return url
    known = KNOWN_MODELS.get(name)
    if known is not None and known.builtin:
        raise UsageError(f"{name} is built into d2cli; there is nothing to fetch")
    if known is None:
        official = ", ".join(n for n, k in KNOWN_MODELS.items() if not k.builtin)
        raise UnknownModel(f"unknown model {name!r}: the official ones are {official}; "
                           "pass --url to fetch another file under this name")
    base = os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{name}.pth" if base else OFFICIAL_URL.format(name=name)


def fetch_model(
    name: str,
    url: str | None = None,
    *,
    expected_sha256: str | None = None,
    force: bool = False,
    retries: int = 3,
    timeout: float = 30.0,
    progress: ProgressFn | None = None,
) -> FetchResult:
    """Download ``name`` into the cache; the file appears only once complete and verified.

    An interrupted transfer is retried ``retries`` times within this call, each time from
    where it stopped; what is left after that stays in ``<name>.pth.part`` and the next
    call resumes it. A cached file is kept unless ``force``. Raises DownloadFailed,
    BadCheckpoint (refused file, deleted), OutputLocked, UnknownModel, UsageError.
    """
    if not NAME_RE.match(name) or name.endswith(".pth"):
        raise UsageError(f"model name {name!r}: use letters, digits, '.', '_' and '-' only, "
                         "without .pth")
    if retries < 0:
        raise UsageError("retries must be >= 0")
    src = model_url(name, url)
    if not src.startswith(("http://", "https://")):
        raise UsageError(f"{src}: only http:// and https:// URLs can be fetched")
    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
        raise UsageError("--sha256 must be 64 hexadecimal digits")
    final = cache_dir() / f"{name}.pth"
    if final.is_file() and not force:
        from . import file_sha256

        return FetchResult(name, final, src, file_sha256(final), final.stat().st_size, False)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{final.parent}: cannot create the weights cache ({e.strerror})") from None

    t0 = time.perf_counter()
    part, meta = partial_path(final), Path(str(partial_path(final)) + ".json")
    with _locked(final):
        res = FetchResult(name, final, src, "", 0, True)
        while True:
            res.attempts += 1
            try:
                kept, restarted = _transfer(src, part, meta, timeout,
                                            Stage(progress, f"fetch {name}", unit="B"))
                if res.attempts == 1:
                    res.resumed_from = kept
                res.restarts += restarted
                break
            except _Interrupted as e:
                if res.attempts > retries:
                    have = part.stat().st_size if part.is_file() else 0
                    if not have:
                        raise DownloadFailed(f"{name}: cannot download {src} ({e})") from None
                    raise DownloadFailed(
                        f"{name}: download from {src} stopped at {have} bytes ({e}); "
                        f"run `d2 weights fetch {name}` again to resume") from None
                time.sleep(min(0.5 * res.attempts, 5.0))
        res.sha256, res.size = _verify(name, src, part, meta, expected_sha256)
        write_json_atomic(record_path(final), {
            "name": name, "url": src, "size": res.size, "sha256": res.sha256,
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "d2cli_version": __version__})
        os.replace(part, final)  # atomic: the cache holds the old file or the verified new one
        _fsync_dir(final.parent)
        meta.unlink(missing_ok=True)
    res.seconds = time.perf_counter() - t0
    return res


def ensure_model(model: str | os.PathLike | None, fetch: bool = False,
                 progress: ProgressFn | None = None) -> ModelInfo:
    """resolve_model, fetching an official model first when ``fetch`` and it is missing.

    Without ``fetch`` a missing official model is an error that says how to fetch it: a
    batch job never starts a download by surprise.
    """
    name = str(model) if model is not None else None
    known = KNOWN_MODELS.get(name or "")
    if fetch and known is not None and not known.builtin:
        from . import model_path

        if not model_path(name).is_file():
            fetch_model(name, progress=progress)
    return resolve_model(model)


# --------------------------------------------------------------------------- internals
def _locked(final: Path) -> contextlib.AbstractContextManager[None]:
    lock = final.with_name(final.name + ".lock")
    return exclusive_lock(
        lock, busy=f"{final.stem} is being fetched by another d2 process; wait for it to finish",
        unwritable=f"{lock}: cannot write the weights cache")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _discard(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """'bytes 100-199/1000' -> (100, 1000); total None for '*'."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        return None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _transfer(src: str, part: Path, meta_path: Path, timeout: float,
              stage: Stage) -> tuple[int, int]:
    """One HTTP request; returns (bytes of an earlier attempt kept, 1 if it restarted at 0).

    Raises _Interrupted when the transfer stops early (the partial file keeps what came).
    """
    meta = _read_json(meta_path)
    have = part.stat().st_size if part.is_file() else 0
    if have and (meta is None or meta.get("url") != src):
        _discard(part, meta_path)  # bytes of an unknown origin: never splice them
        have, meta = 0, None
    if have and meta and meta.get("total") == have:
        return have, 0  # complete already (a run died between the last byte and the check)
    headers = {"User-Agent": f"d2cli/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = (meta or {}).get("etag") or (meta or {}).get("last_modified")
        if validator:  # the server sends the whole new file if it changed since
            headers["If-Range"] = validator
    try:
        resp = urllib.request.urlopen(urllib.request.Request(src, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our partial file does not fit the file there now
            _discard(part, meta_path)
            raise _Interrupted("the server refused to resume; starting over") from None
        if e.code in RETRY_HTTP:
            raise _Interrupted(f"HTTP {e.code} {e.reason}") from None
        raise DownloadFailed(f"{src}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _Interrupted(f"cannot connect: {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Interrupted(f"cannot connect: {e}") from None

    with resp:
        kept, restarted = 0, 0
        if resp.status == 206:
            cr = _content_range(resp.headers.get("Content-Range"))
            if cr is None or cr[0] != have:
                _discard(part, meta_path)
                raise _Interrupted("the server sent another byte range than asked; starting over")
            kept, total, mode = have, cr[1], "ab"
        elif resp.status == 200:
            restarted = 1 if have else 0  # Range ignored, or If-Range: the file changed
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            have, mode = 0, "wb"
        else:
            raise DownloadFailed(f"{src}: unexpected HTTP status {resp.status}")
        write_json_atomic(meta_path, {"url": src, "total": total,
                                "etag": resp.headers.get("ETag"),
                                "last_modified": resp.headers.get("Last-Modified")})
        try:
            with open(part, mode) as f:
                stage.update(have, total)
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Interrupted(f"connection lost: {e.__class__.__name__}") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    have += len(chunk)
                    stage.update(have, total)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(f"{part}: cannot write ({e.strerror})") from None
    if total is not None and have < total:
        raise _Interrupted(f"connection closed after {have} of {total} bytes")
    if total is not None and have > total:
        _discard(part, meta_path)
        raise _Interrupted(f"received {have} bytes, more than the announced {total}")
    return kept, restarted


def _verify(name: str, src: str, part: Path, meta: Path,
            expected_sha256: str | None) -> tuple[str, int]:
    """(sha256, size) of a complete download, or delete it and raise BadCheckpoint."""
    from ..model import read_state_dict

    h = hashlib.sha256()
    with open(part, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    sha, size = h.hexdigest(), part.stat().st_size
    if expected_sha256 and sha != expected_sha256.lower():
        _discard(part, meta)
        raise BadCheckpoint(f"{name}: the file from {src} has sha256 {sha}, expected "
                            f"{expected_sha256.lower()}; it was deleted")
    try:
        read_state_dict(part)
    except BadCheckpoint as e:
        _discard(part, meta)
        reason = str(e).removeprefix(f"{part}: ")
        raise BadCheckpoint(f"{name}: the file from {src} is not a valid D2-Net checkpoint "
                            f"({reason}); it was deleted, nothing was saved") from None
    return sha, size
