"""Track building (:mod:`d2cli.refine.tracks`) against a plain per-match union-find."""

from __future__ import annotations

import math

import numpy as np
import pytest

from d2cli.refine import tracks as tracks_module
from d2cli.refine.tracks import anchors, build_tracks

Matches = dict[tuple[str, str], np.ndarray]


def reference_tracks(counts: dict[str, int], matches: Matches, max_track: int
                     ) -> tuple[dict[str, list[int]], int, int, int]:
    """The definition, one match at a time: union-find, then the track rules.

    Returns (name -> track id per keypoint, count, conflicting, too_large); refinable
    tracks are numbered in the order of their first keypoint (image order, then index).
    """
    keys = [(n, i) for n in counts for i in range(counts[n])]  # the global keypoint order
    parent = {k: k for k in keys}

    def find(k: tuple[str, int]) -> tuple[str, int]:
        while parent[k] != k:
            k = parent[k]
        return k

    matched = set()
    for (a, b), m in matches.items():
        for i, j in np.asarray(m).reshape(-1, 2).tolist():
            matched.update([(a, i), (b, j)])
            ra, rb = find((a, i)), find((b, j))
            if ra != rb:
                parent[rb] = ra
    members: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for k in keys:  # in keypoint order: members lists and their order of first keypoint
        if k in matched:
            members.setdefault(find(k), []).append(k)
    ids = {n: [-1] * counts[n] for n in counts}
    count = conflicting = too_large = 0
    for group in members.values():
        images = [n for n, _ in group]
        if len(group) < 2:
            continue
        if len(set(images)) < len(images):
            conflicting += 1
        elif len(group) > max_track:
            too_large += 1
        else:
            for n, i in group:
                ids[n][i] = count
            count += 1
    return ids, count, conflicting, too_large


def reference_anchors(ids: dict[str, np.ndarray], matches: Matches) -> dict[str, list[bool]]:
    """The keypoint of most matches of each track; ties: the first image, the lowest index."""
    degree = {(n, i): 0 for n in ids for i in range(len(ids[n]))}
    for (a, b), m in matches.items():
        for i, j in np.asarray(m).reshape(-1, 2).tolist():
            degree[(a, i)] += 1
            degree[(b, j)] += 1
    best: dict[int, tuple[str, int]] = {}
    for n in ids:
        for i, t in enumerate(ids[n].tolist()):
            if t >= 0 and (t not in best or degree[(n, i)] > degree[best[t]]):
                best[t] = (n, i)
    out = {n: [False] * len(ids[n]) for n in ids}
    for n, i in best.values():
        out[n][i] = True
    return out


def check(counts: dict[str, int], matches: Matches, max_track: int = 512) -> None:
    """build_tracks and anchors give exactly what the reference gives."""
    got = build_tracks(counts, matches, max_track)
    ids, count, conflicting, too_large = reference_tracks(counts, matches, max_track)
    assert (got.count, got.conflicting, got.too_large) == (count, conflicting, too_large)
    assert list(got.ids) == list(counts)
    for n in counts:
        assert got.ids[n].dtype == np.int64 and got.ids[n].tolist() == ids[n], n
    assert {n: a.tolist() for n, a in anchors(got, matches).items()} == \
        reference_anchors(got.ids, matches)


def random_graph(rng: np.random.Generator) -> tuple[dict[str, int], Matches]:
    """A few images (some without keypoints), random pairs (self pairs too), random matches."""
    counts = {f"im{k}": int(rng.integers(0, 12)) for k in range(int(rng.integers(1, 7)))}
    names = [n for n in counts if counts[n]]
    matches: Matches = {}
    for _ in range(int(rng.integers(0, 10))):
        if not names:
            break
        a, b = (str(x) for x in rng.choice(names, 2))
        m = int(rng.integers(0, 6))
        matches[(a, b)] = np.stack([rng.integers(0, counts[a], m), rng.integers(0, counts[b], m)], 1)
    return counts, matches


@pytest.mark.parametrize("seed", range(40))
def test_random_graphs_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts, matches = random_graph(rng)
    check(counts, matches, max_track=int(rng.integers(2, 8)))


def chain(n: int, order: str) -> tuple[dict[str, int], Matches]:
    """One keypoint per image, each image matched to the next: one track of ``n``.

    order: how the images are named relative to the chain (``forward``, ``backward``,
    ``shuffled``), as the numbering decides which way labels would have to travel.
    """
    rng = np.random.default_rng(1)
    pos = {"forward": np.arange(n), "backward": np.arange(n)[::-1],
           "shuffled": rng.permutation(n)}[order]
    names = [f"im{p:05d}" for p in pos]
    counts = {f"im{k:05d}": 1 for k in range(n)}
    return counts, {(names[k], names[k + 1]): np.array([[0, 0]]) for k in range(n - 1)}


@pytest.mark.parametrize("order", ["forward", "backward", "shuffled"])
def test_long_chains_take_logarithmic_rounds(order: str, monkeypatch) -> None:
    rounds = []
    real = tracks_module._hook
    monkeypatch.setattr(tracks_module, "_hook", lambda *a: rounds.append(1) or real(*a))
    n = 3000
    counts, matches = chain(n, order)
    check(counts, matches, max_track=n)
    assert len(rounds) <= math.log2(n) + 1
    t = build_tracks(counts, matches, max_track=n)
    assert t.count == 1 and all(t.ids[x].tolist() == [0] for x in counts)
    assert build_tracks(counts, matches, max_track=n - 1).too_large == 1


def test_zigzag_chain_between_two_images_is_one_conflicting_track() -> None:
    # a0-b0-a1-b1-...: one component of 2000 holding many keypoints of each image
    k = 1000
    m = np.stack([np.r_[np.arange(k), np.arange(1, k)], np.r_[np.arange(k), np.arange(k - 1)]], 1)
    counts, matches = {"a": k + 5, "b": k}, {("a", "b"): m}
    check(counts, matches, max_track=10_000)
    assert build_tracks(counts, matches).conflicting == 1


def test_isolated_keypoints_and_empty_inputs() -> None:
    for counts, matches in [({}, {}), ({"a": 0}, {}), ({"a": 3, "b": 2}, {}),
                            ({"a": 3, "b": 0}, {("a", "b"): np.zeros((0, 2), np.int64)}),
                            ({"a": 4, "b": 4, "c": 3}, {("a", "c"): np.array([[3, 2]])})]:
        check(counts, matches)
    t = build_tracks({"a": 4, "b": 4, "c": 3}, {("a", "c"): np.array([[3, 2]])})
    assert t.ids["b"].tolist() == [-1] * 4 and t.ids["a"].tolist() == [-1, -1, -1, 0]


def test_ids_follow_the_keypoints_not_the_order_of_the_matches() -> None:
    counts = {"a": 6, "b": 6, "c": 6}
    matches = {("a", "b"): np.array([[5, 0], [0, 5]]), ("b", "c"): np.array([[5, 1], [0, 2]])}
    backwards = {(b, a): m[::-1, ::-1] for (a, b), m in reversed(matches.items())}
    t, u = build_tracks(counts, matches), build_tracks(counts, backwards)
    assert all(t.ids[n].tolist() == u.ids[n].tolist() for n in counts)
    assert t.ids["a"].tolist() == [0, -1, -1, -1, -1, 1]


def test_out_of_range_index_is_refused() -> None:
    with pytest.raises(IndexError, match="out of range"):
        build_tracks({"a": 2, "b": 2}, {("a", "b"): np.array([[0, 2]])})
