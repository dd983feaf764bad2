"""What a shell script reads back from the CLI through a pipe (issue 20). Real processes."""

from __future__ import annotations


def test_weights_list_piped_is_one_line_per_model(d2):
    proc = d2("weights", "list")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["name", "kind", "available"]
    assert any(ln.startswith("d2cli-v1\tbuilt-in\tyes\t") for ln in lines[1:])
    assert all(len(ln.split("\t")) == 7 for ln in lines[:-1] if "\t" in ln)
