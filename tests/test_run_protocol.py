"""The run protocol, the same for every batch command (real processes, real signals).

Ctrl-C mid-run -> 130 and the next run resumes; one bad item -> 1 and the rest done;
a set-up error -> 2 with one line; a full disk -> 2 with one line. Progress lines are
written to a non-terminal stderr as the run goes (``D2CLI_PROGRESS_SECONDS``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from conftest import as_in_a_terminal

from d2cli.extract import ExtractSettings, extract
from d2cli.pairs import pairs_exhaustive, save_pairs

SMALL = ["--max-edge", "200"]


@pytest.fixture(scope="module")
def photos(subset_photos) -> Path:
    return subset_photos


@pytest.fixture(scope="module")
def features(tmp_path_factory, photos) -> Path:
    """Features of the six photos, with a pairs file of all pairs."""
    w = tmp_path_factory.mktemp("feats")
    extract([photos], w / "feats.h5", settings=ExtractSettings(max_edge=200), device="cpu")
    names = sorted(p.name for p in photos.glob("*.jpg"))
    save_pairs(pairs_exhaustive(names), w / "pairs.txt", "exhaustive")
    return w


class Case:
    """One batch command: how to run it, break one item, break its set-up, and count work."""

    def __init__(self, name: str, args, bad_item, bad_setup, done) -> None:
        self.name, self.args, self.bad_item, self.bad_setup, self.done = (
            name, args, bad_item, bad_setup, done)


def _entries(path: Path) -> int:
    """Finished entries in an H5Store output: final file plus committed parts."""
    names: set[str] = set()
    if path.is_dir():  # a work folder whose output is not there yet
        return 0
    for f in [path, *sorted(Path(str(path) + ".parts").glob("*.h5"))]:
        if f.is_file():
            with h5py.File(f, "r") as h:
                h.visititems(lambda n, o: names.add(n) if isinstance(o, h5py.Dataset) else None)
    return len({n.rsplit("/", 1)[0] for n in names})


def _extract_case(photos: Path, features: Path, tmp: Path) -> Case:
    def bad_item(out: Path) -> list[str]:
        return ["extract", str(_with_broken_image(photos, tmp)), "--out", str(out), *SMALL]

    return Case(
        "extract",
        lambda out: ["extract", str(photos), "--out", str(out), "--commit-every", "1", *SMALL],
        bad_item,
        lambda out: ["extract", str(photos), "--out", str(out), "--model", "nope", *SMALL],
        _entries)


def _with_broken_image(photos: Path, tmp: Path) -> Path:
    src = tmp / "with-bad"
    shutil.copytree(photos, src, dirs_exist_ok=True)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return src


def _sfm_case(photos: Path, features: Path, tmp: Path) -> Case:
    """d2 sfm: OUT is its work folder; the work counted is the images extracted so far."""
    def args(work: Path, images: Path = photos) -> list[str]:
        return ["sfm", str(images), "--out", str(work), "--max-edge", "400", "--device", "cpu"]

    return Case(
        "extract",  # the stage whose progress lines the test waits for
        args,
        lambda work: args(work, _with_broken_image(photos, tmp)),
        lambda work: [*args(work), "--camera-params", "x"],
        lambda work: _entries(work / "feats.h5"))


def _match_case(photos: Path, features: Path, tmp: Path) -> Case:
    feats, pairs = features / "feats.h5", features / "pairs.txt"

    def bad_item(out: Path) -> list[str]:
        bad = tmp / "bad-pairs.txt"
        bad.write_text(pairs.read_text() + "02928139_3448003521.jpg missing.jpg\n")
        return ["match", "--pairs", str(bad), "--features", str(feats), "--out", str(out)]

    return Case(
        "match",
        lambda out: ["match", "--pairs", str(pairs), "--features", str(feats), "--out", str(out),
                     "--commit-every", "1", "--device", "cpu"],
        bad_item,
        lambda out: ["match", "--pairs", str(tmp / "nope.txt"), "--features", str(feats),
                     "--out", str(out)],
        _entries)


CASES = {"extract": _extract_case, "match": _match_case, "sfm": _sfm_case}


def _env(**kw: str) -> dict[str, str]:
    return dict(os.environ, COLUMNS="200", D2CLI_PROGRESS_SECONDS="0", **kw)


def _run(args: list[str], **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2cli", *args], capture_output=True, text=True,
                          timeout=600, env=_env(), **popen)


@pytest.fixture(params=sorted(CASES))
def case(request, photos, features, tmp_path) -> Case:
    return CASES[request.param](photos, features, tmp_path)


def test_progress_lines_when_stderr_is_not_a_terminal(case, tmp_path):
    proc = _run(case.args(tmp_path / "out.h5"))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if re.match(rf"{case.name}: \d+/", ln)]
    assert len(lines) >= 2, proc.stderr  # one per item at a 0 s interval, then the end
    assert "/s" in lines[-1] and "(100%)" in lines[-1]


def test_ctrl_c_exits_130_and_the_next_run_resumes(case, tmp_path):
    out = tmp_path / "out.h5"
    full = _run(case.args(tmp_path / "full.h5"))
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, "-m", "d2cli", *case.args(out)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_in_a_terminal)
    seen = []
    for line in proc.stderr:  # the first item done: interrupt as a user would
        seen.append(line)
        if line.startswith(f"{case.name}: 1/"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "re-run to resume" in rest and "Traceback" not in rest
    kept = case.done(out)
    total = case.done(tmp_path / "full.h5")
    assert 1 <= kept < total
    again = _run([*case.args(out), "--json"])
    assert again.returncode == 0, again.stderr
    assert case.done(out) == total
    s = json.loads(again.stdout)
    resumed = s["steps"]["extract"]["skipped"] if "steps" in s else s["skipped"]
    assert resumed >= kept


def test_one_bad_item_exits_1_and_the_rest_are_done(case, tmp_path):
    good = _run(case.args(tmp_path / "good.h5"))
    assert good.returncode == 0, good.stderr
    proc = _run([*case.bad_item(tmp_path / "out.h5"), "--json"])
    assert proc.returncode == 1, proc.stderr
    s = json.loads(proc.stdout)
    assert len(s["failed"]) == 1 and "Traceback" not in proc.stderr
    assert case.done(tmp_path / "out.h5") == case.done(tmp_path / "good.h5") > 0


def test_setup_error_exits_2_with_one_line(case, tmp_path):
    proc = _run(case.bad_setup(tmp_path / "out.h5"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _small_files() -> None:  # in the child: files over 2 KiB fail with EFBIG, as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 10, 2 << 10))


def test_full_disk_exits_2_with_one_line(case, tmp_path):
    out = tmp_path / "out.h5"
    proc = _run(case.args(out), preexec_fn=_small_files)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("d2: error:")]
    assert len(errors) == 1 and "cannot write" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and case.done(out) == 0
