"""Shared fixtures: paths to test data and a helper to run the real ``d2`` CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
GOLDEN = DATA / "golden"
SAMPLES = ROOT / "src" / "d2cli" / "data" / "sacre_coeur"


def as_in_a_terminal() -> None:
    """``preexec_fn`` of a d2 run that a test stops with Ctrl-C: SIGINT as a terminal's
    foreground job has it. A test runner started as a background job of a script
    (``make test &``, nohup) ignores SIGINT; d2 inherits that and, like every background
    job of a shell, rightly keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


def run_d2(*args: str | os.PathLike, cwd: str | os.PathLike | None = None,
           check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m d2cli ARGS`` as a real process; returns the completed process."""
    cmd = [sys.executable, "-m", "d2cli", *map(str, args)]
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# six sample photos that d2 sfm reconstructs at 400 px and more
SUBSET = ["02928139_3448003521.jpg", "17295357_9106075285.jpg", "44120379_8371960244.jpg",
          "51091044_3486849416.jpg", "71295362_4051449754.jpg", "93341989_396310999.jpg"]


@pytest.fixture(scope="session")
def subset_photos(tmp_path_factory) -> Path:
    """A folder with the SUBSET photos (read-only for the tests that use it)."""
    import shutil

    root = tmp_path_factory.mktemp("subset")
    for name in SUBSET:
        shutil.copy(SAMPLES / name, root / name)
    return root


@pytest.fixture(scope="module")
def six(subset_photos, tmp_path_factory) -> Path:
    """The SUBSET photos and a list of them beside them (test_sfm_cli, test_sfm_refine_cli)."""
    import shutil

    root = tmp_path_factory.mktemp("six")
    for n in SUBSET:
        shutil.copy(subset_photos / n, root / n)
    (root / "list.txt").write_text("".join(n + "\n" for n in SUBSET))
    return root


@pytest.fixture(scope="session")
def d2():
    return run_d2
