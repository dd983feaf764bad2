"""How every step's cost grows with the number of images (issue 24), on a synthetic street.

    python benchmarks/scale.py                          # N = 100, 1000, 5000; map up to 1000
    python benchmarks/scale.py --sizes 100,300 --json   # the rows as JSON on stdout
    python benchmarks/scale.py --write                  # also put the tables in docs/benchmarks.md
    python benchmarks/scale.py --sizes 1000 --profile --step-args 'match=--commit-every 1024'

For each N, ``synthetic_scene.py`` writes a scene with known cameras (N database images
along a curving street, one held-back query per 10, ~``--keypoints`` keypoints per image,
MNN-confusable descriptors, distractors) as real d2cli files, then the real ``d2`` commands
run on it, each as its own process:

- ``d2 pairs``: ``exhaustive`` (N <= ``--exhaustive-max``: only the pairs file is made and
  timed), ``sequential -k OVERLAP`` (each image with 2 x OVERLAP neighbours), ``from-retrieval
  -k 2 x OVERLAP`` (synthetic global descriptors) and ``from-poses -k 2 x OVERLAP`` (the
  ground-truth cameras as a model); the pipeline matches the ``--pairs`` ones (sequential);
- ``d2 match`` of those pairs; the same pairs again in ``--shards`` shards (``--shard i/n``,
  one after the other) and ``d2 merge`` of the part files (checked equal to the plain run);
- ``d2 colmap-import`` with pycolmap verification, and ``--no-verify`` into another database;
- the track building of ``d2 refine`` (``d2 refine`` itself reads the images, which a
  synthetic scene has not): ``verified_matches`` + ``build_tracks`` through the Python API
  in a child process;
- ``d2 reconstruct`` (incremental, and ``--mapper global``) up to ``--map-max`` images;
- ``d2 pairs from-retrieval`` of the queries, ``d2 match`` of them against the database
  (``--features-ref``), ``d2 merge`` of the two features files and ``d2 localize`` of the
  queries against the incremental model.

Every process is started by a small launcher (``LAUNCHER``) that reaps it with ``os.wait4``:
its own user and system CPU time and peak RSS (``ru_maxrss``), not floored by this
script's RSS. Per step:
wall and CPU time, peak RSS, output size on disk, throughput (pairs/s, images/s,
queries/s) and, between consecutive sizes, the time growth per 10x of the step's work
(10x = linear) and the peak-RSS ratio. Correctness per size: the share of correct matches
between neighbouring views (from the scene's truth), registered images, median
camera-centre error after a similarity alignment to the ground truth (fraction of the
scene extent: the largest distance between two camera centres), localised queries.

Work folders are ``--out``/n<N> (default ``bench-out/scale``, git-ignored); with
``--resume`` a size's steps already recorded in its ``results.json`` are not run again.
``--profile`` runs the ``d2`` commands under cProfile and adds the top functions of the
longest one to the report; ``--step-args`` passes extra options to one command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from docs_section import DOC, write_section  # benchmarks/ is on sys.path
from synthetic_scene import (
    SceneConfig,
    evaluate_model,
    evaluate_queries,
    generate_scene,
    iter_neighbour_pairs,
    load_scene,
    match_precision,
)

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Scale (benchmarks/scale.py)"
DEFAULT_OUT = ROOT / "bench-out" / "scale"


def d2_command() -> list[str]:
    """The installed ``d2`` console script beside this Python, else ``python -m d2cli``."""
    script = Path(sys.executable).with_name("d2")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "d2cli"]


# ----------------------------------------------------------------------------- one process
@dataclass
class Step:
    """One measured process (or one phase of a child, see ``inner``)."""

    size: int  # N, database images of the scene
    step: str  # the row's label
    command: str
    work: int = 0  # items of work: pairs, images or queries
    unit: str = "pairs"
    wall_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    max_rss_mib: float = 0.0
    output_bytes: int = 0
    rc: int = 0
    summary: dict[str, Any] = field(default_factory=dict)  # the command's --json
    note: str = ""
    profile: str = ""  # cProfile output of the process (--profile)
    load: float = 0.0  # 1-minute load average when the process ended (others' work too)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def throughput(self) -> float:
        return self.work / self.wall_s if self.wall_s > 0 else 0.0

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(cpu_s=self.cpu_s, throughput=self.throughput)
        return d


def _parse_json(text: str) -> dict[str, Any]:
    """The JSON object a ``--json`` command printed (the last one on stdout)."""
    text = text.strip()
    try:
        out = json.loads(text)
        return out if isinstance(out, dict) else {"value": out}
    except json.JSONDecodeError:
        pass
    start = text.rfind("\n{")
    while start >= 0:
        try:
            return json.loads(text[start + 1:])
        except json.JSONDecodeError:
            start = text.rfind("\n{", 0, start)
    try:
        return json.loads(text[text.index("{"):])
    except (ValueError, json.JSONDecodeError):
        return {}


def size_on_disk(paths: Sequence[Path]) -> int:
    """Bytes of files and folders (recursively); missing paths count 0."""
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


# Runs the measured command and reports its rusage. Linux carries a process's peak RSS
# across fork and exec (the child starts with its parent's high-water mark), so a command
# started straight from this script would report at least this script's own RSS, which
# grows with N; this small launcher is its parent instead, and passes the figures back.
LAUNCHER = """
import json, os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - t,
               "user": ru.ru_utime, "sys": ru.ru_stime, "maxrss_kib": ru.ru_maxrss}, f)
"""


@dataclass
class Usage:
    """What one measured process used (from the launcher)."""

    rc: int
    wall: float
    user: float
    sys: float
    maxrss_kib: int


def run_process(cmd: Sequence[str], cwd: Path, log: Path) -> tuple[Usage, str]:
    """Run ``cmd`` in ``cwd`` under :data:`LAUNCHER`, stdout and stderr to
    ``log``.{out,err}; (its usage, its stdout)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    usage_path = log.with_suffix(".usage.json")
    usage_path.unlink(missing_ok=True)
    env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(usage_path), *cmd], cwd=cwd,
                                stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            proc.wait()
        except BaseException:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    if not usage_path.is_file():
        raise RuntimeError(f"the launcher of {shlex.join(cmd)} ended with {proc.returncode}")
    return Usage(**json.loads(usage_path.read_text())), out_path.read_text()


# ----------------------------------------------------------------------------- the run
@dataclass
class Options:
    sizes: list[int]
    map_max: int = 1000
    global_max: int = 1000
    exhaustive_max: int = 300
    keypoints: int = 1000
    overlap: int = 10
    pairs: str = "sequential"
    shards: int = 2
    threads: int | None = None
    seed: int = 0
    out: Path = DEFAULT_OUT
    resume: bool = False
    keep: bool = False
    step_args: dict[str, list[str]] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)  # step labels (or label prefixes) not run
    self_calibrate: bool = False
    profile: bool = False
    argv: str = ""  # the command line, for the report


class SizeRun:
    """All steps of one N in its work folder; records go to ``results.json`` as they end."""

    def __init__(self, n: int, opts: Options) -> None:
        self.n, self.opts = n, opts
        self.dir = opts.out / f"n{n}"
        self.results_path = self.dir / "results.json"
        self.done: dict[str, dict[str, Any]] = {}
        if opts.resume and self.results_path.is_file():
            self.done = {r["step"]: r for r in json.loads(self.results_path.read_text())["steps"]
                         if r["rc"] == 0}
        elif self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.steps: list[Step] = []
        self.correctness: dict[str, Any] = {}
        self.d2 = d2_command()

    def save(self) -> None:
        # recorded rows this run has not reached yet stay in the file: a resumed run that is
        # stopped early must not forget them (they would be re-run against later outputs)
        reached = {s.step for s in self.steps}
        rows = [s.row() for s in self.steps]
        rows += [r for label, r in self.done.items() if label not in reached]
        tmp = self.results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"size": self.n, "steps": rows,
                                   "correctness": self.correctness}, indent=1, default=str))
        os.replace(tmp, self.results_path)

    def _recorded(self, label: str) -> Step | None:
        r = self.done.get(label)
        if r is None:
            return None
        keep = {k: r[k] for k in Step.__dataclass_fields__ if k in r}
        step = Step(**keep)
        self.steps.append(step)
        return step

    def run(self, label: str, args: Sequence[str], outputs: Sequence[str], unit: str,
            work_key: str | None = None, work: int | None = None, d2: bool = True,
            extra_key: str | None = None, ok_codes: tuple[int, ...] = (0,)) -> Step:
        """Run one command (``d2 ARGS --json`` unless ``d2`` is False) and record its row.
        ``work_key``: the summary field that counts the work, else ``work``; ``ok_codes``:
        exit codes that are a result (recorded as 0, the code kept in the note)."""
        old = self._recorded(label)
        if old is not None:
            return old
        if self.skipped(label):
            # not recorded; rc -1 so that the steps needing its output do not run either
            return Step(self.n, label, "", 0, unit, rc=-1, note="skipped (--skip)")
        extra = self.opts.step_args.get(extra_key or label.split()[0], [])
        log = self.dir / "logs" / re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
        prof = log.with_suffix(".prof") if self.opts.profile and d2 else None
        if prof is not None:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "d2cli", *args, *extra]
        else:
            cmd = [*self.d2, *args, *extra] if d2 else list(args)
        print(f"[N={self.n}] {label}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        usage, stdout = run_process(cmd, self.dir, log)
        rc, wall = usage.rc, usage.wall
        summary = _parse_json(stdout)
        count = summary.get(work_key, 0) if work_key else (work or 0)
        if isinstance(count, list | dict):
            count = len(count)
        step = Step(self.n, label, shlex.join(cmd), int(count or 0), unit, wall, usage.user,
                    usage.sys, usage.maxrss_kib / 1024, size_on_disk([self.dir / o for o in outputs]),
                    rc, summary, profile=str(prof) if prof is not None and prof.is_file() else "",
                    load=os.getloadavg()[0])
        if rc in ok_codes and rc != 0:
            step.rc, step.note = 0, f"exit {rc}"
        elif rc != 0:
            err = log.with_suffix(".err").read_text().strip().splitlines()
            step.note = f"exit {rc}: {err[-1] if err else stdout.strip()[-300:]}"
            print(f"[N={self.n}] {label} FAILED {step.note}", file=sys.stderr, flush=True)
        else:
            print(f"[N={self.n}] {label}: {wall:.1f} s, {step.cpu_s:.1f} s CPU, "
                  f"{step.max_rss_mib:.0f} MiB, {count} {unit}", file=sys.stderr, flush=True)
        self.steps.append(step)
        self.save()
        return step

    def skipped(self, label: str) -> bool:
        """``--skip PREFIX``: the label is PREFIX or starts with PREFIX and a space."""
        return any(label == p or label.startswith(p + " ") for p in self.opts.skip)

    def child(self, label: str, args: Sequence[str], outputs: Sequence[str], unit: str,
              work_key: str) -> Step:
        """This script as a child process (``--child ...``), measured like a command."""
        return self.run(label, [sys.executable, __file__, "--child", *args], outputs, unit,
                        work_key=work_key, d2=False)

    # -------------------------------------------------------------------------------- steps
    def all_steps(self) -> None:
        o, n = self.opts, self.n
        k = 2 * o.overlap
        config = SceneConfig(num_images=n, keypoints=o.keypoints, seed=o.seed)
        # the fixed cost of any d2 process (interpreter, imports), to read the rows below
        (self.dir / "startup-names.txt").write_text("a.jpg\nb.jpg\n")
        self.run("start-up (d2 pairs of 2 names)", ["pairs", "sequential", "--image-list",
                                                    "startup-names.txt", "-k", "1", "-o",
                                                    "startup-pairs.txt", "--json"],
                 [], "pairs", "pairs", extra_key="-")
        gen = self.child("generate scene", ["generate", ".", json.dumps(asdict(config))],
                         ["feats.h5", "feats-query.h5", "global.h5", "truth.h5", "cameras.json",
                          "queries.txt", "gt-model"], "images", "images")
        if gen.rc != 0:
            return
        scene = load_scene(self.dir)
        self.correctness.update(images=n, queries=len(scene.query_names),
                                keypoints_mean=gen.summary.get("keypoints_mean"),
                                extent_m=round(scene.extent, 3))
        # pairs files
        pairs_files = {}
        if n <= o.exhaustive_max:
            self.run("pairs exhaustive", ["pairs", "exhaustive", "-f", "feats.h5", "-o",
                                          "pairs-exhaustive.txt", "--json"],
                     ["pairs-exhaustive.txt"], "pairs", "pairs")
            pairs_files["exhaustive"] = "pairs-exhaustive.txt"
        self.run("pairs sequential", ["pairs", "sequential", "-f", "feats.h5", "-k", str(o.overlap),
                                      "-o", "pairs-sequential.txt", "--json"],
                 ["pairs-sequential.txt"], "pairs", "pairs")
        pairs_files["sequential"] = "pairs-sequential.txt"
        self.run("pairs from-retrieval", ["pairs", "from-retrieval", "-d", "global.h5",
                                          "--query-prefix", "db/", "--ref-prefix", "db/",
                                          "-k", str(k), "-o", "pairs-retrieval.txt", "--json"],
                 ["pairs-retrieval.txt"], "pairs", "pairs")
        pairs_files["retrieval"] = "pairs-retrieval.txt"
        self.run("pairs from-poses", ["pairs", "from-poses", "gt-model", "-k", str(k),
                                      "-o", "pairs-poses.txt", "--json"],
                 ["pairs-poses.txt"], "pairs", "pairs")
        pairs_files["from-poses"] = "pairs-poses.txt"
        if o.pairs not in pairs_files:
            raise SystemExit(f"--pairs {o.pairs}: not made at N={n} (exhaustive only up to "
                             f"--exhaustive-max {o.exhaustive_max})")
        pairs = pairs_files[o.pairs]
        self.correctness["pairs"] = f"{o.pairs} ({pairs})"
        # matching, plain and sharded + merge
        m = self.run("match", ["match", "-p", pairs, "-f", "feats.h5", "-o", "matches.h5", "-q",
                               "--json"], ["matches.h5"], "pairs", "matched")
        if m.rc != 0:
            return
        self._mm_floor(pairs)
        if o.shards > 1:
            parts = []
            for i in range(o.shards):
                self.run(f"match --shard {i}/{o.shards}",
                         ["match", "-p", pairs, "-f", "feats.h5", "-o", "matches-sharded.h5",
                          "--shard", f"{i}/{o.shards}", "-q", "--json"],
                         [f"matches-sharded.shard{i}-of-{o.shards}.h5"], "pairs", "matched",
                         extra_key="match")
                parts.append(f"matches-sharded.shard{i}-of-{o.shards}.h5")
            mg = self.run("merge (match shards)", ["merge", *parts, "-o", "matches-sharded.h5",
                                                   "--remove-parts", "--json"],
                          ["matches-sharded.h5"], "pairs", "entries", extra_key="merge")
            if mg.rc == 0 and not mg.note:
                mg.note = self._compare_matches("matches.h5", "matches-sharded.h5")
                self.save()
            if not o.keep:
                (self.dir / "matches-sharded.h5").unlink(missing_ok=True)
        sample = list(iter_neighbour_pairs(scene.db_names))
        prec = match_precision(self.dir / "matches.h5", scene.files["truth"], sample)
        self.correctness.update(match_precision_neighbours=round(prec["precision"], 4),
                                matches_per_neighbour_pair=round(prec["matches_per_pair"], 1))
        # import
        cam = ["--camera-model", "PINHOLE"]
        if not o.self_calibrate:
            cam += ["--camera-params", scene.camera_params]
        imp = self.run("colmap-import (verify)", ["colmap-import", "db.db", "-f", "feats.h5",
                                                  "-m", "matches.h5", *cam, "-q", "--json"],
                       ["db.db"], "pairs", "pairs", extra_key="colmap-import")
        self.run("colmap-import --no-verify", ["colmap-import", "db-noverify.db", "-f", "feats.h5",
                                               "-m", "matches.h5", *cam, "--no-verify", "-q",
                                               "--json"],
                 ["db-noverify.db"], "pairs", "pairs", extra_key="colmap-import")
        if not o.keep:
            (self.dir / "db-noverify.db").unlink(missing_ok=True)
        if imp.rc != 0:
            return
        stats = imp.summary.get("database_stats", {})
        self.correctness.update(verified_pairs=imp.summary.get("inlier_pairs_now"),
                                inlier_share=round(stats["inlier_matches"] / stats["matches"], 4)
                                if stats.get("matches") else None)
        self._tracks()
        # mapping
        model = None
        if n <= o.map_max:
            threads = ["--threads", str(o.threads)] if o.threads else []
            rec = self.run("reconstruct (incremental)", ["reconstruct", "db.db", "-o", "sparse",
                                                         *threads, "-q", "--json"],
                           ["sparse"], "images", work=n, extra_key="reconstruct")
            if rec.rc == 0:
                model = self.dir / "sparse"
                ev = evaluate_model(model, scene)
                self.correctness["incremental"] = ev
        if n <= o.global_max:
            threads = ["--threads", str(o.threads)] if o.threads else []
            rec = self.run("reconstruct --mapper global", ["reconstruct", "db.db", "-o",
                                                           "sparse-global", "--mapper", "global",
                                                           *threads, "-q", "--json"],
                           ["sparse-global"], "images", work=n, extra_key="reconstruct")
            if rec.rc == 0:
                self.correctness["global"] = evaluate_model(self.dir / "sparse-global", scene)
                if model is None:  # above --map-max: queries go against the global model
                    model = self.dir / "sparse-global"
        self.save()
        if model is not None and scene.query_names:
            self._localize(scene, model)
        if not o.keep:
            for f in ("feats-all.h5",):
                (self.dir / f).unlink(missing_ok=True)
        self.save()

    def _compare_matches(self, a: str, b: str) -> str:
        from d2cli.io.features import MatchFile

        with MatchFile(self.dir / a) as fa, MatchFile(self.dir / b) as fb:
            ka, kb = set(fa.keys()), set(fb.keys())
            if ka != kb:
                return f"merged shards differ from the plain run: {len(ka ^ kb)} pairs"
            for key in sorted(ka)[:50]:
                x, y = key.split("/")
                if (fa.get(x, y)[0] != fb.get(x, y)[0]).any():
                    return f"merged shards differ from the plain run at {key}"
        return "merged = plain run"

    def _mm_floor(self, pairs: str) -> None:
        """A row with the time ``torch.mm`` alone takes on the matched pairs' shapes."""
        s = self.child("floor: torch.mm of the same pairs", ["mm", "feats.h5", pairs], [], "pairs", "pairs")
        if s.rc == 0:  # the row's time is the products', not the child's (it reads too)
            s.wall_s = s.user_s = s.summary["seconds"]
            s.sys_s, s.max_rss_mib = 0.0, 0.0
            s.note = (f"torch.mm only: {s.summary['sampled']} sampled pairs scaled to all, "
                      f"{s.summary['gflops']:.0f} GFLOP/s, {s.summary['threads']} threads")
            self.save()

    def _tracks(self) -> None:
        label_read, label_build = "tracks: verified_matches (API)", "tracks: build_tracks (API)"
        if label_read in self.done and label_build in self.done:
            self._recorded(label_read)
            self._recorded(label_build)
            return
        s = self.child("tracks (child process)", ["tracks", "db.db", "feats.h5"], [], "pairs",
                       "pairs")
        if s.note == "skipped (--skip)":
            return
        self.steps.remove(s)
        if s.rc != 0:
            s.step = label_build
            self.steps.append(s)
            return
        for label, phase in ((label_read, "read"), (label_build, "build")):
            ph = s.summary[phase]
            self.steps.append(Step(self.n, label, s.command, s.work, "pairs", ph["wall_s"],
                                   ph["cpu_s"], 0.0, s.max_rss_mib, 0, 0, s.summary,
                                   note="CPU: user+sys of the phase; RSS: the whole child",
                                   load=s.load))
        self.save()

    def _localize(self, scene: Any, model: Path) -> None:
        o = self.opts
        q = self.run("pairs from-retrieval (queries)",
                     ["pairs", "from-retrieval", "-d", "global.h5", "--query-prefix", "query/",
                      "--ref-prefix", "db/", "-k", str(o.overlap), "-o", "pairs-query.txt", "--json"],
                     ["pairs-query.txt"], "pairs", "pairs", extra_key="pairs")
        if q.rc != 0:
            return
        mq = self.run("match (queries)", ["match", "-p", "pairs-query.txt", "-f", "feats-query.h5",
                                          "--features-ref", "feats.h5", "-o", "matches-query.h5",
                                          "-q", "--json"],
                      ["matches-query.h5"], "pairs", "matched", extra_key="match")
        mf = self.run("merge (features db + queries)", ["merge", "feats.h5", "feats-query.h5", "-o",
                                                        "feats-all.h5", "--json"],
                      ["feats-all.h5"], "images", "entries", extra_key="merge")
        if mq.rc != 0 or mf.rc != 0:
            return
        loc = self.run("localize", ["localize", "--reference", str(model.name), "--queries",
                                    "queries.txt", "-p", "pairs-query.txt", "-f", "feats-all.h5",
                                    "-m", "matches-query.h5", "-o", "poses.txt", "-q", "--json"],
                       ["poses.txt", "poses.log"], "queries", "queries", ok_codes=(0, 1))
        inc = self.correctness.get("incremental" if model.name == "sparse" else "global", {})
        self.correctness["localize_model"] = model.name
        if loc.rc == 0 and "alignment" in inc:  # exit 1 (some queries failed) counts too
            self.correctness["localize"] = evaluate_queries(self.dir / "poses.txt", scene,
                                                            inc["alignment"])


# ----------------------------------------------------------------------------- children
def child_generate(folder: str, config_json: str) -> dict[str, Any]:
    scene = generate_scene(folder, SceneConfig(**json.loads(config_json)))
    return {"images": len(scene.db_names) + len(scene.query_names), "db": len(scene.db_names),
            "queries": len(scene.query_names), "keypoints_mean": round(scene.keypoints_mean, 1),
            "points_per_metre": round(scene.points_per_metre, 2), "extent": scene.extent,
            "seconds": round(scene.seconds, 3)}


def child_tracks(database: str, features: str) -> dict[str, Any]:
    """d2 refine's track building, phase by phase: the database's verified matches, then
    the connected components (``build_tracks``)."""
    import h5py

    from d2cli.refine.job import verified_matches
    from d2cli.refine.tracks import build_tracks

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    w0, c0 = clock()
    ids, matches = verified_matches(database)
    with h5py.File(features, "r") as f:
        num = {n: int(f[n]["keypoints"].shape[0]) for n in ids}
    w1, c1 = clock()
    tracks = build_tracks(num, matches)
    w2, c2 = clock()
    return {"pairs": len(matches), "matches": int(sum(len(m) for m in matches.values())),
            "keypoints": int(sum(num.values())), "tracks": tracks.count,
            "conflicting": tracks.conflicting, "too_large": tracks.too_large,
            "read": {"wall_s": w1 - w0, "cpu_s": c1 - c0},
            "build": {"wall_s": w2 - w1, "cpu_s": c2 - c1}}


def child_mm_floor(features: str, pairs: str, sample: str = "2000") -> dict[str, Any]:
    """The floor of ``d2 match`` on these pairs: one ``torch.mm`` of each pair's two
    descriptor tensors ((N, 512) float32, or bf16 where ``auto`` screens that pair in bf16),
    read before the clock starts, in both layouts: (N, D) contiguous, and the (N, D) view of
    the stored (D, N) array that the matcher uses; the faster one is the floor. An evenly
    spread sample of ``sample`` pairs is timed; ``seconds`` is its time scaled to all pairs."""
    import torch

    from d2cli.io.features import FeatureFile
    from d2cli.io.pairs import read_pairs
    from d2cli.mnn import uses_bf16_screen

    pair_list = read_pairs(pairs)
    step = max(1, len(pair_list) // int(sample))
    picked = pair_list[::step]
    cpu = torch.device("cpu")
    timed = {"contiguous": 0.0, "transposed view": 0.0}
    flops = 0.0
    with FeatureFile(features) as ff, torch.no_grad():
        for a, b in picked:
            stored = [torch.from_numpy(ff.descriptors(n, dtype=None)).float() for n in (a, b)]
            views = [d.T for d in stored]
            if uses_bf16_screen("auto", cpu, views[0].shape[0], views[1].shape[0]):
                views = [d.bfloat16() for d in views]
            for layout, (d0, d1) in (("contiguous", [d.contiguous() for d in views]),
                                     ("transposed view", views)):
                t = time.perf_counter()
                torch.mm(d0, d1.T)
                timed[layout] += time.perf_counter() - t
            flops += 2.0 * views[0].shape[0] * views[1].shape[0] * views[0].shape[1]
    scale = len(pair_list) / len(picked)
    best = min(timed, key=timed.get)
    return {"pairs": len(pair_list), "sampled": len(picked), "seconds": timed[best] * scale,
            "layout": best, "seconds_by_layout": {k: v * scale for k, v in timed.items()},
            "gflops": flops / timed[best] / 1e9 if timed[best] > 0 else 0.0,
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- tables
def per_10x(t0: float, t1: float, w0: int, w1: int) -> float | None:
    """Time ratio scaled to 10x the work: 10 ** (log(t1 / t0) / log(w1 / w0)); 10 = linear."""
    if w0 <= 0 or w1 <= w0 or t0 <= 0 or t1 <= 0:
        return None
    return 10 ** (math.log(t1 / t0) / math.log(w1 / w0))


def growth(rows: list[Step]) -> dict[tuple[int, str], tuple[float | None, float | None,
                                                            float | None]]:
    """(size, step) -> (wall-time growth per 10x work, CPU-time growth per 10x work, peak-RSS
    ratio) against the previous size of the same step; None where undefined."""
    out: dict[tuple[int, str], tuple[float | None, float | None, float | None]] = {}
    by_step: dict[str, list[Step]] = {}
    for r in rows:
        if r.rc == 0:
            by_step.setdefault(r.step, []).append(r)
    for label, rs in by_step.items():
        rs.sort(key=lambda r: r.size)
        for a, b in zip(rs, rs[1:], strict=False):
            rss = b.max_rss_mib / a.max_rss_mib if a.max_rss_mib > 0 else None
            out[(b.size, label)] = (per_10x(a.wall_s, b.wall_s, a.work, b.work),
                                    per_10x(a.cpu_s, b.cpu_s, a.work, b.work), rss)
    return out


def _num(v: float, digits: int = 1) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _bytes(b: int) -> str:
    if b <= 0:
        return "–"
    if b < 1 << 20:
        return f"{b / 1024:.0f} KiB"
    if b < 1 << 30:
        return f"{b / 2**20:.1f} MiB"
    return f"{b / 2**30:.2f} GiB"


def steps_table(rows: list[Step]) -> list[str]:
    g = growth(rows)
    order: dict[str, int] = {}
    for s in rows:
        order.setdefault(s.step, len(order))
    lines = ["| step | N | work | wall (s) | CPU (s) | peak RSS (MiB) | output | throughput "
             "| wall per 10x work | CPU per 10x work | RSS vs previous N | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda s: (order[s.step], s.size)):
        gr, gc, rss = g.get((r.size, r.step), (None, None, None))
        if r.rc != 0:
            lines.append(f"| {r.step} | {r.size:,} | – | {_num(r.wall_s)} | {_num(r.cpu_s)} | "
                         f"{r.max_rss_mib:.0f} | – | **failed** ({r.note[:80]}) | | | | |")
            continue
        lines.append(
            f"| {r.step} | {r.size:,} | {r.work:,} {r.unit} | {_num(r.wall_s, 2)} | "
            f"{_num(r.cpu_s, 2)} | {r.max_rss_mib:.0f} | {_bytes(r.output_bytes)} | "
            f"{_num(r.throughput)} {r.unit}/s | {f'{gr:.1f}x' if gr else ''} | "
            f"{f'{gc:.1f}x' if gc else ''} | {f'{rss:.2f}x' if rss else ''} | "
            f"{f'{r.load:.1f}' if r.load else '–'} |")
    return lines


def match_floor_table(rows: list[Step]) -> list[str]:
    """``d2 match`` against ``torch.mm`` of the same shapes, per N: the share of the floor."""
    by = {(r.size, r.step): r for r in rows if r.rc == 0}
    lines = ["| N | pairs | torch.mm alone (s) | d2 match process (s) | d2 match job (s) "
             "| process at % of torch.mm | job at % of torch.mm |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sorted({r.size for r in rows}):
        mm, m = by.get((n, "floor: torch.mm of the same pairs")), by.get((n, "match"))
        if mm is None or m is None:
            continue
        job = float(m.summary.get("seconds") or m.wall_s)
        lines.append(f"| {n:,} | {m.work:,} | {mm.wall_s:.1f} | {m.wall_s:.1f} | {job:.1f} | "
                     f"{100 * mm.wall_s / m.wall_s:.0f} % | {100 * mm.wall_s / job:.0f} % |")
    return lines


def correctness_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| N | keypoints / image | pairs | correct MNN matches (neighbours) | verified pairs "
             "| inlier share | registered (incremental) | median centre error / extent "
             "| registered (global) | median centre error / extent (global) | localised queries "
             "| query centre error / extent |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def reg(ev: dict[str, Any] | None) -> tuple[str, str]:
        if not ev:
            return "–", "–"
        frac = ev.get("median_fraction")
        return (f"{ev['registered']}/{ev['images']}",
                f"{100 * frac:.3f} %" if frac is not None else "–")

    for c in results:
        inc, glo, loc = c.get("incremental"), c.get("global"), c.get("localize")
        lq = f"{loc['localized']}/{loc['queries']}" if loc else "–"
        if loc and c.get("localize_model") == "sparse-global":
            lq += " (global model)"
        le = f"{100 * loc['median_fraction']:.3f} %" if loc and "median_fraction" in loc else "–"
        prec = c.get("match_precision_neighbours")
        share = c.get("inlier_share")
        lines.append(
            f"| {c.get('images', 0):,} | {c.get('keypoints_mean', '–')} | {c.get('pairs', '–')} | "
            f"{f'{100 * prec:.1f} %' if prec is not None else '–'} | {c.get('verified_pairs', '–')} | "
            f"{f'{100 * share:.1f} %' if share is not None else '–'} | "
            f"{' | '.join(reg(inc))} | {' | '.join(reg(glo))} | {lq} | {le} |")
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start "
            "(a shared machine: other processes take part of the cores)")


def report(opts: Options, rows: list[Step], results: list[dict[str, Any]], header: str) -> str:
    config = SceneConfig(keypoints=opts.keypoints, seed=opts.seed)
    sizes = ", ".join(f"{n:,}" for n in opts.sizes)
    lines = [
        SECTION, "",
        f"`python benchmarks/scale.py {opts.argv}` on {header}; one run per size "
        f"(N = {sizes}).", "",
        "The scene (`benchmarks/synthetic_scene.py`): N database images and N/"
        f"{config.query_every} held-back queries, {config.width}x{config.height} PINHOLE "
        f"f = {config.focal:g} px, {config.spacing:g} m apart along a curving street, looking at "
        f"facades {config.facade_distance:g}-{config.facade_distance + 2.4:g} m away (setbacks, "
        f"recessed windows), the street surface and clutter; ~{opts.keypoints} keypoints per "
        f"image ({100 * config.outlier_fraction:.0f} % distractors), {config.pixel_noise:g} px "
        f"keypoint noise, 512-D post-ReLU descriptors with per-observation noise "
        f"{config.desc_noise:g} (texture classes shared by many points). Pairs for matching: "
        f"`{opts.pairs}` (`-k {opts.overlap}`: {2 * opts.overlap} partners per image); the other "
        f"pairs rows only write their pairs file (`-k {2 * opts.overlap}`). Known intrinsics "
        f"(`--camera-model PINHOLE --camera-params`), mapping up to N = {opts.map_max:,} "
        f"(global mapper up to {opts.global_max:,}).", "",
        "Each row is one process, reaped with `os.wait4` by a small launcher: its own CPU "
        "time (user + system, all its threads) and peak RSS (Linux carries the parent's "
        "high-water mark into a child, so the launcher, not this script, is the parent). "
        "*wall / CPU per 10x work*: the wall-time (CPU-time) ratio to the previous size, "
        "scaled to 10x the step's work "
        "(pairs, images or queries): 10x is linear, more is superlinear, less means a fixed "
        "cost still dominates (the *start-up* row: any `d2` process, interpreter and imports). "
        "*load*: the machine's 1-minute load average when the step ended (2 cores: above 2, "
        "other processes were competing; small torch operations then wait for descheduled "
        "threads, which slows `d2 match` on small pairs many times over). The `tracks` rows are "
        "phases of one child process running "
        "`d2cli.refine.job.verified_matches` and `d2cli.refine.tracks.build_tracks` "
        "(`d2 refine` itself needs the image files); their RSS is the child's.", "",
        *steps_table(rows), "",
        "Correctness (ground truth of the synthetic scene): *correct MNN matches*: share of "
        "the `d2 match` matches of neighbouring views that join two observations of one 3D "
        "point; *inlier share*: verified inlier matches / raw matches in the database; "
        "*centre error*: median distance of the registered cameras to the ground truth "
        "after a least-squares similarity (Umeyama) alignment of the centres, as a fraction "
        "of the scene extent (largest distance between two cameras); queries are placed "
        "by the same alignment.", "",
        *correctness_table(results), "",
        "`d2 match` against its floor, `torch.mm` of the same descriptor tensors for every "
        "matched pair (the `floor` rows: the products alone, timed on a spread sample of "
        "pairs and scaled to all). *process*: the whole `d2 match` (interpreter, imports, "
        "reading, matching, writing); *job*: the time the command reports for its own work.", "",
        *match_floor_table(rows), "",
    ]
    notes = [s for s in rows if s.note and s.rc == 0 and "merged" in s.note]
    for s in notes:
        lines.append(f"N = {s.size:,}, `d2 merge` of {opts.shards} match shards: {s.note}.")
    failed = [s for s in rows if s.rc != 0]
    for s in failed:
        lines.append(f"N = {s.size:,}, {s.step} failed: `{s.command}`: {s.note}")
    if notes or failed:
        lines.append("")
    lines += profile_lines(rows)
    return "\n".join(lines)


def profile_lines(rows: list[Step], top: int = 12) -> list[str]:
    """Where the time goes in the longest profiled step of the largest size (cProfile,
    functions by own time; a call into C++ such as pycolmap's counts as its own time)."""
    import pstats

    profiled = [r for r in rows if r.profile and Path(r.profile).is_file()]
    if not profiled:
        return []
    biggest = max(profiled, key=lambda r: (r.size, r.wall_s))
    stats = pstats.Stats(biggest.profile).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    lines = [f"Where the time goes in the longest step, {biggest.step} at N = {biggest.size:,} "
             f"({biggest.wall_s:.1f} s wall; `python -m cProfile`, functions by own time, "
             f"{total:.1f} s profiled):", "",
             "| function | calls | own (s) | share | cumulative (s) |", "|---|---:|---:|---:|---:|"]
    for (path, line, func), (_, calls, own, cum, _) in sorted(
            stats.items(), key=lambda kv: -kv[1][2])[:top]:
        where = f"{Path(path).name}:{line}" if path != "~" else "built-in"
        lines.append(f"| `{func}` ({where}) | {calls:,} | {own:.2f} | "
                     f"{100 * own / total:.1f} % | {cum:.2f} |")
    return [*lines, ""]


# ----------------------------------------------------------------------------- main
def parse_step_args(values: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values:
        step, sep, args = v.partition("=")
        if not sep:
            raise SystemExit(f"--step-args expects STEP=ARGS, got {v!r}")
        out.setdefault(step.strip(), []).extend(shlex.split(args))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,5000", help="numbers of database images")
    ap.add_argument("--map-max", type=int, default=1000, help="incremental mapping up to this N")
    ap.add_argument("--global-max", type=int, help="global mapping up to this N [--map-max]")
    ap.add_argument("--exhaustive-max", type=int, default=300,
                    help="d2 pairs exhaustive up to this N")
    ap.add_argument("--keypoints", type=int, default=1000, help="keypoints per image")
    ap.add_argument("--overlap", type=int, default=10, help="d2 pairs sequential -k")
    ap.add_argument("--pairs", default="sequential",
                    choices=["sequential", "exhaustive", "retrieval", "from-poses"],
                    help="pairs that are matched, imported and mapped")
    ap.add_argument("--shards", type=int, default=2, help="d2 match --shard i/n runs (0: none)")
    ap.add_argument("--threads", type=int, help="d2 reconstruct --threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--self-calibrate", action="store_true",
                    help="import without --camera-params (COLMAP's focal guess)")
    ap.add_argument("--step-args", action="append", default=[], metavar="STEP=ARGS",
                    help="extra arguments of a d2 command, e.g. 'match=--commit-every 1024' "
                         "(STEP: pairs, match, merge, colmap-import, reconstruct, localize)")
    ap.add_argument("--skip", action="append", default=[], metavar="STEP",
                    help="a step not to run (its label, or a label prefix before a space), "
                         "e.g. 'match --shard' or 'floor:'; repeatable")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="work folders (n<N> each)")
    ap.add_argument("--resume", action="store_true", help="keep the steps already recorded")
    ap.add_argument("--keep", action="store_true", help="keep the large intermediate files")
    ap.add_argument("--profile", action="store_true",
                    help="run the d2 commands under cProfile; the report shows the longest one")
    ap.add_argument("--json", action="store_true", help="all rows as JSON on stdout")
    ap.add_argument("--write", action="store_true", help=f"put the tables in {DOC}")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        children = {"generate": child_generate, "tracks": child_tracks, "mm": child_mm_floor}
        result = children[kind](*rest)
        print(json.dumps(result))
        return
    opts = Options(sizes=sorted({int(s) for s in args.sizes.split(",") if s.strip()}),
                   map_max=args.map_max,
                   global_max=args.global_max if args.global_max is not None else args.map_max,
                   exhaustive_max=args.exhaustive_max, keypoints=args.keypoints,
                   overlap=args.overlap, pairs=args.pairs, shards=args.shards,
                   threads=args.threads, seed=args.seed, out=args.out.resolve(),
                   resume=args.resume, keep=args.keep,
                   step_args=parse_step_args(args.step_args), skip=args.skip,
                   self_calibrate=args.self_calibrate,
                   profile=args.profile,
                   argv=shlex.join(a for a in (sys.argv[1:] if argv is None else argv)
                                   if a not in ("--write", "--json", "--resume")))
    if opts.pairs == "exhaustive" and max(opts.sizes) > opts.exhaustive_max:
        ap.error(f"--pairs exhaustive needs every size <= --exhaustive-max ({opts.exhaustive_max})")
    header = machine()
    rows: list[Step] = []
    results: list[dict[str, Any]] = []
    for n in opts.sizes:
        run = SizeRun(n, opts)
        try:
            run.all_steps()
        finally:
            run.save()
        rows += run.steps
        results.append(run.correctness)
    text = report(opts, rows, results, header)
    if args.json:
        print(json.dumps({"machine": header, "options": {**asdict(opts), "out": str(opts.out)},
                          "steps": [r.row() for r in rows], "correctness": results},
                         indent=1, default=str))
    else:
        print(text)
    if args.write:
        write_section(SECTION, text + "\n")


if __name__ == "__main__":
    main()
