"""Step settings (d2cli.settings): defaults live once, the CLI reads them, bad values are
usage errors, and the module stays light enough for an instant ``d2 --help``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import click
import pytest

from d2cli import settings as S
from d2cli.cli import main
from d2cli.errors import UsageError
from d2cli.pairs import PairStrategy

# CLI option name -> (settings class, field) where the names differ
RENAMED = {"threads": (S.MapSettings, "num_threads"), "refine_focal": (S.LocalizeSettings,
                                                                       "refine_focal_length"),
           "sift_max_features": (S.SiftSettings, "max_num_features")}
# the commands whose options are step settings, and which settings classes they fill
COMMANDS = {
    ("extract",): (S.ExtractSettings,),
    ("match",): (S.MatchSettings,),
    ("pairs", "sequential"): (PairStrategy,),
    ("pairs", "from-retrieval"): (PairStrategy,),
    ("pairs", "from-model"): (PairStrategy,),
    ("colmap-import",): (S.ImportSettings,),
    ("reconstruct",): (S.MapSettings,),
    ("localize",): (S.LocalizeSettings,),
    ("sfm",): (S.ExtractSettings, PairStrategy, S.ImportSettings, S.MapSettings),
    ("eval", "hpatches"): (S.ExtractSettings, S.SiftSettings),
    ("eval", "pose"): (S.ExtractSettings, S.SiftSettings),
}


def _command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return cmd


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_cli_option_defaults_are_the_settings_defaults(path):
    cmd = _command(path)
    checked = 0
    for param in cmd.params:
        if (not isinstance(param, click.Option) or param.multiple or param.is_flag
                or not param.show_default):  # no default of its own: derived or off
            continue
        for cls in COMMANDS[path]:
            owner, field = RENAMED.get(param.name, (cls, param.name))
            fields = {f.name: f for f in dataclasses.fields(owner)}
            if owner is not cls or field not in fields:
                continue
            f = fields[field]
            if f.default is dataclasses.MISSING:
                continue
            assert param.default == f.default, (
                f"d2 {' '.join(path)} --{param.name}: {param.default!r}, "
                f"{owner.__name__}.{field}: {f.default!r}")
            checked += 1
    assert checked >= 1, f"d2 {' '.join(path)}: no option read from its settings"


def test_sfm_offers_every_extraction_and_mapping_option_of_the_single_steps():
    """d2 sfm re-uses the shared option groups: nothing d2 extract / reconstruct can set
    about the features or the mapping is missing from it."""
    sfm = {p.name for p in _command(("sfm",)).params}
    for step in (("extract",), ("reconstruct",)):
        shared = {p.name for p in _command(step).params} & {
            f.name for cls in COMMANDS[("sfm",)] for f in dataclasses.fields(cls)}
        shared |= {"multiscale", "scales", "no_relu", "threads", "decode"} & {
            p.name for p in _command(step).params}
        shared.discard("descriptor_dtype")  # storage only: d2 sfm keeps float16
        assert shared <= sfm, shared - sfm


def test_overrides_replace_fields_and_unknown_names_are_usage_errors():
    base = S.MapSettings(seed=3)
    got = S.with_overrides(base, S.MapSettings, {"mapper": "global"})
    assert (got.mapper, got.seed) == ("global", 3)
    assert S.with_overrides(None, S.MapSettings, {}) == S.MapSettings()
    with pytest.raises(UsageError, match="unknown MapSettings field.*sed.*known:.*seed"):
        S.with_overrides(None, S.MapSettings, {"sed": 1})


@pytest.mark.parametrize("make, message", [
    (lambda: S.MapSettings(mapper="glomap"), "unknown mapper 'glomap'"),
    (lambda: S.MapSettings(intrinsics="free"), "unknown intrinsics mode"),
    (lambda: S.MapSettings(num_threads=0), "threads must be >= 1"),
    (lambda: S.ImportSettings(camera_mode="one"), "unknown camera mode 'one'"),
    (lambda: S.LocalizeSettings(max_error=0), "max-error must be > 0"),
    (lambda: S.LocalizeSettings(min_inliers=3), "min-inliers must be >= 4"),
    (lambda: S.ExtractSettings(max_edge=4), "max-edge must be >= 8"),
])
def test_bad_values_are_usage_errors(make, message):
    with pytest.raises(UsageError, match=message):
        make()


def test_camera_params_become_a_tuple_of_floats():
    s = S.ImportSettings(camera_params=[500, 500, 320, 240])
    assert s.camera_params == (500.0, 500.0, 320.0, 240.0) and hash(s)


def test_the_cli_and_the_settings_load_neither_torch_nor_pycolmap():
    code = ("import sys, d2cli.cli, d2cli.settings; "
            "print(sorted(m for m in ('torch', 'pycolmap', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
