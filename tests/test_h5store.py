"""The crash-safe HDF5 store at scale: tiered merges, appending finalize, fast listing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from d2cli.io import h5store
from d2cli.io.h5store import H5Store, list_entries


def _entry(k: int) -> dict[str, np.ndarray]:
    return {"matches0": np.full(5, k, np.int32), "matching_scores0": np.full(5, k / 7, np.float32)}


def _name(k: int) -> str:
    return f"a{k % 7}.jpg/b{k}.jpg"  # hloc's nested pair layout: shared first-level groups


def _parts(out: Path) -> list[Path]:
    return sorted(Path(str(out) + ".parts").glob("part-*.h5"))


def _read(path: Path) -> dict[str, int]:
    with h5py.File(path, "r") as f:
        return {n: int(f[n]["matches0"][0]) for n in list_entries(f)}


def _walk_entries(h5: h5py.Group) -> list[str]:
    """The plain high-level walk that list_entries replaces."""
    names: list[str] = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Group) and any(
        isinstance(v, h5py.Dataset) for v in o.values()) else None)
    return names


def test_list_entries_matches_the_high_level_walk(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["root_dataset"] = 1  # not an entry: no group
        f.create_group("empty/nested")  # no datasets: not an entry
        f["a/b/c/x"] = np.arange(3)
        f["a/b/y"] = 2.0  # a group with datasets and a subgroup
        f["z/w"] = np.zeros(0)
        f["scalar/s"] = np.float32(3)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert sorted(list_entries(f)) == sorted(_walk_entries(f)) == ["a/b", "a/b/c", "scalar", "z"]


def test_tiered_merges_keep_few_parts_and_later_entries_win(tmp_path, monkeypatch):
    monkeypatch.setattr(h5store, "FANOUT", 4)
    out = tmp_path / "m.h5"
    store = H5Store(out, attrs={"v": 1}, commit_every=1)
    store.__enter__()
    try:
        most = 0
        for k in range(200):
            # every 10th entry overrides one written ~60 entries (several merges) before
            name = _name(k - 60) if k % 10 == 0 and k >= 60 else _name(k)
            store.add(name, _entry(k))
            store.commit(wait=True)
            most = max(most, len(_parts(out)))
        levels = {h5store._part_level(p) for p in _parts(out)}
    finally:
        store._release()  # a kill: no finalize, the parts stay
    # at most FANOUT - 1 parts per level (plus the one being merged)
    assert most <= 4 * 4 and max(levels) >= 2
    expected: dict[str, int] = {}
    for k in range(200):
        expected[_name(k - 60) if k % 10 == 0 and k >= 60 else _name(k)] = k
    # the parts alone (what a resumed run sees) and the finalized file hold the last writes
    stored: dict[str, int] = {}
    for p in _parts(out):
        stored.update(_read(p))
    assert stored == expected
    with H5Store(out, attrs={"v": 1}) as again:
        assert again.done() == set(expected)
    assert _read(out) == expected and not _parts(out)


def test_finalize_appends_to_the_final_file_without_rewriting_entries(tmp_path):
    out = tmp_path / "m.h5"
    with H5Store(out, attrs={"v": 1}, commit_every=50) as store:
        for k in range(300):
            store.add(_name(k), _entry(k))
    with h5py.File(out, "r") as f:
        before = {n: f[n]["matches0"].id.get_offset() for n in list_entries(f)}
    with H5Store(out, attrs={"v": 2}) as store:
        store.add(_name(5), _entry(1000))  # an override
        store.add("new.jpg/other.jpg", _entry(7))
    got = _read(out)
    assert got[_name(5)] == 1000 and got["new.jpg/other.jpg"] == 7 and len(got) == 301
    assert all(got[_name(k)] == k for k in range(300) if k != 5)
    with h5py.File(out, "r") as f:
        assert f.attrs["v"] == 2
        # the old entries were not re-copied: same dataset offsets in the byte copy
        after = {n: f[n]["matches0"].id.get_offset() for n in before if n != _name(5)}
    assert after == {n: o for n, o in before.items() if n != _name(5)}


def test_a_slow_disk_does_not_stall_the_producer(tmp_path, monkeypatch):
    """While a part is being written, entries accumulate into the next one."""
    import threading

    gate = threading.Event()
    real = H5Store._write_h5

    def slow(self, target, fill, data_bytes):
        gate.wait(30)
        real(self, target, fill, data_bytes)

    monkeypatch.setattr(H5Store, "_write_h5", slow)
    out = tmp_path / "m.h5"
    with H5Store(out, commit_every=4) as store:
        for k in range(4 * h5store.MAX_BACKLOG):  # the first commit blocks in the writer
            store.add(_name(k), _entry(k))
        assert len(store._buffer) == 4 * h5store.MAX_BACKLOG - 4  # kept buffering
        gate.set()
    assert len(_read(out)) == 4 * h5store.MAX_BACKLOG


@pytest.mark.parametrize("when", ["merge", "finalize"])
def test_kill_after_a_merge_before_its_sources_are_removed(tmp_path, when):
    """SIGKILL between writing a merged file and deleting its sources: nothing lost."""
    out = tmp_path / "m.h5"
    if when == "finalize":
        with H5Store(out) as s:  # an existing final file to fold into
            s.add("old/x", {"matches0": np.full(2, -1)})
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from d2cli.io import h5store
        from d2cli.io.h5store import H5Store
        h5store.FANOUT = 3
        real = H5Store._merge_into
        def dying(self, target, sources, base=None):
            real(self, target, sources, base)
            if (base is None) == ({when!r} == "merge"):
                os.kill(os.getpid(), signal.SIGKILL)
        H5Store._merge_into = dying
        with H5Store({str(out)!r}, commit_every=1) as s:
            for k in range(7):
                s.add(f"a/b{{k}}", {{"matches0": np.full(2, k)}})
                s.commit(wait=True)
    """)
    p = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert p.returncode == -9
    written = 3 if when == "merge" else 7  # the first merge comes with the third part
    with H5Store(out) as s:
        assert {f"a/b{k}" for k in range(written)} <= s.done()
    got = _read(out)
    assert all(got[f"a/b{k}"] == k for k in range(written))
    assert got.get("old/x", -1) == -1 and not _parts(out)


def test_files_open_with_a_fixed_small_metadata_cache(tmp_path):
    """Every read and write of the store goes through h5_file: a fixed 4 MiB metadata
    cache (HDF5's adaptive one grew a process by ~5 KB per entry visited)."""
    from d2cli.io.h5store import METADATA_CACHE_BYTES, h5_file, open_h5

    path = tmp_path / "x.h5"
    with H5Store(path, attrs={"a": 1}) as st:
        for k in range(40):
            st.add(f"im{k}.jpg", {"keypoints": np.zeros((3, 2), np.float32)})
    for f in (h5_file(path), open_h5(path)):
        with f:
            c = f.id.get_mdc_config()
            assert c.max_size == c.min_size == c.initial_size == METADATA_CACHE_BYTES
            assert c.incr_mode == c.decr_mode == c.flash_incr_mode == 0
            assert f.id.get_mdc_size()[0] <= METADATA_CACHE_BYTES
            assert len(list(f)) == 40


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds libhdf5 in /proc")
def test_hdf5_free_lists_are_returned_after_merges_while_files_stay_usable(tmp_path):
    """release_hdf5_memory reaches the libhdf5 h5py runs on; files open meanwhile (a
    reader here, the store's own parts) read and write on, entry for entry."""
    assert h5store._libraries() is not None
    path = tmp_path / "x.h5"
    with H5Store(path, attrs={"a": 1}, commit_every=2) as st:
        for k in range(2 * h5store.FANOUT + 3):  # parts merged at least twice
            st.add(f"im{k}.jpg", {"keypoints": np.full((3, 2), k, np.float32)})
    with h5py.File(path, "r") as f:
        h5store.release_hdf5_memory()
        names = list_entries(f, holding="keypoints")
        assert len(names) == 2 * h5store.FANOUT + 3
        for n in names:
            assert f[n]["keypoints"][0, 0] == int(n[2:-4])
