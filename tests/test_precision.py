"""The precision policy (auto -> bf16 where the device runs it fast) and what it records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from d2cli.cli import main
from d2cli.errors import UsageError
from d2cli.extract import ExtractSettings, extract
from d2cli.io.features import FeatureFile
from d2cli.precision import (
    PRECISIONS,
    cpu_bf16_instructions,
    fast_bf16_reason,
    resolve_precision,
    uses_channels_last,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("device_type,isa,cc,expected", [
    ("cpu", "AMX-BF16", None, "CPU with AMX-BF16"),
    ("cpu", "AVX512-BF16", None, "CPU with AVX512-BF16"),
    ("cpu", None, None, None),  # AVX2-only CPUs, ARM: bf16 would be emulated
    ("cuda", None, (9, 0), "CUDA compute capability 9.0"),  # Hopper
    ("cuda", None, (8, 0), "CUDA compute capability 8.0"),  # Ampere
    ("cuda", None, (7, 5), None),  # Turing: no bf16 tensor cores
    ("mps", None, None, None),
])
def test_policy_bf16_only_where_fast(device_type, isa, cc, expected):
    assert fast_bf16_reason(device_type, isa, cc) == expected


def test_cpu_instructions_are_read_from_the_cpu():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = set(cpuinfo.read_text().split())
    expected = ("AMX-BF16" if "amx_bf16" in flags else
                "AVX512-BF16" if "avx512_bf16" in flags else None)
    assert cpu_bf16_instructions() == expected


def test_resolve():
    auto = resolve_precision("auto", CPU)
    assert auto == ("bf16" if cpu_bf16_instructions() else "fp32")
    for p in ("fp32", "tf32", "bf16", "fp16"):
        assert resolve_precision(p, CPU) == p  # explicit choices are kept on any device
    with pytest.raises(UsageError, match="precision must be one of"):
        resolve_precision("int8", CPU)
    with pytest.raises(UsageError, match="precision must be one of"):
        ExtractSettings(precision="fp64")
    assert ExtractSettings().precision == "auto"
    assert ExtractSettings().resolved(CPU).precision == auto
    # fp32 on the CPU keeps NCHW: the reference's summation order
    assert not uses_channels_last(CPU, "fp32") and uses_channels_last(CPU, "bf16")


def test_cli_choices_are_the_library_ones():
    for cmd in ("extract", "sfm"):
        opt = next(p for p in main.commands[cmd].params if p.name == "precision")
        assert tuple(opt.type.choices) == PRECISIONS and opt.default == "auto"


def test_extract_records_the_resolved_precision(golden_dir, tmp_path):
    res = extract([golden_dir / "b.png"], tmp_path / "f.h5",
                  settings=ExtractSettings(max_edge=200), device="cpu", workers=0)
    auto = resolve_precision("auto", CPU)
    s = res.summary()
    assert s["precision"] == auto and s["precision_note"].startswith("auto: ")
    with FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.attrs["settings"]["precision"] == auto  # never "auto"
    # a resume that asks for the same precision explicitly is the same file
    again = extract([golden_dir / "b.png"], tmp_path / "f.h5",
                    settings=ExtractSettings(max_edge=200, precision=auto), device="cpu")
    assert again.skipped == ["b.png"]
    # the other precision is refused: features of two precisions never mix
    other = "fp32" if auto == "bf16" else "bf16"
    with pytest.raises(Exception, match="precision"):
        extract([golden_dir / "b.png"], tmp_path / "f.h5",
                settings=ExtractSettings(max_edge=200, precision=other), device="cpu")


def test_cli_prints_the_choice(golden_dir, tmp_path):
    r = CliRunner().invoke(main, ["extract", str(golden_dir / "b.png"), "--out",
                                  str(tmp_path / "f.h5"), "--max-edge", "200"])
    assert r.exit_code == 0, r.output
    auto = resolve_precision("auto", CPU)
    assert f"{auto} (auto: " in r.output
    r = CliRunner().invoke(main, ["extract", str(golden_dir / "b.png"), "--out",
                                  str(tmp_path / "g.h5"), "--max-edge", "200",
                                  "--precision", "fp32", "--json"])
    assert r.exit_code == 0, r.output
    assert '"precision": "fp32"' in r.output and '"precision_note": "requested"' in r.output


def test_bf16_trunk_keeps_the_fp32_keypoints(samples_dir):
    """bf16 moves few keypoints: most fp32 ones are found again within half a pixel."""
    from d2cli.extract import Extractor
    from d2cli.images import load_rgb
    rgb = load_rgb(samples_dir / "71295362_4051449754.jpg")
    f32 = Extractor(None, ExtractSettings(max_edge=640, precision="fp32"), "cpu")(rgb)
    b16 = Extractor(None, ExtractSettings(max_edge=640, precision="bf16"), "cpu")(rgb)
    d = np.linalg.norm(f32.keypoints[:, None] - b16.keypoints[None], axis=2).min(axis=1)
    assert (d <= 0.5).mean() > 0.85
    assert 0.9 * len(f32) <= len(b16) <= 1.2 * len(f32)
