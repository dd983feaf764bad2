"""Usage errors raised inside a command body (click's BadParameter included) exit 2 with one
line, and one JSON object with --json: not exit 3, "internal error"."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from d2cli.cli import main
from d2cli.errors import EXIT_USAGE


@pytest.mark.parametrize("args, says", [
    (["show", "keypoints", "x.png", "--width", "10"], "--width: must be >= 16"),
    (["show", "matches", "a.png", "b.png", "--width", "10"], "--width: must be >= 32"),
    (["show", "model", ".", "--width", "100"], "--width: must be >= 400"),
    (["eval", "hpatches", ".", "--both-scales", "--multiscale"], "chooses the scales itself"),
    (["eval", "pose", ".", "--both-scales", "--scales", "1"], "chooses the scales itself"),
    (["match", "-p", "pairs.txt", "--matcher", "nope"], "unknown matcher 'nope' (one of mnn"),
])
def test_bad_option_in_a_command_body_is_a_usage_error(args, says, tmp_path):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == EXIT_USAGE, r.output
    assert "internal error" not in r.output and says in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == EXIT_USAGE
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["exit_code"] == EXIT_USAGE and says in out["error"]
