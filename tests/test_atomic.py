"""io.atomic.move_into: the one folder update of reconstruct and export."""

from d2cli.io.atomic import move_into, new_temporary_dir


def test_named_entries_replaced_stale_folders_removed_other_files_kept(tmp_path):
    out = tmp_path / "sparse"
    (out / "models" / "1").mkdir(parents=True)
    (out / "models" / "1" / "images.bin").write_text("stale second model")
    (out / "images.bin").write_text("old")
    (out / "notes.txt").write_text("the user's")
    staged = new_temporary_dir(out)
    (staged / "images.bin").write_text("new")
    (staged / "points3D.bin").write_text("new points")
    move_into(staged, out, ["images.bin", "points3D.bin", "cameras.bin", "models"])
    assert (out / "images.bin").read_text() == "new"
    assert (out / "points3D.bin").read_text() == "new points"
    assert not (out / "models").exists() and not (out / "cameras.bin").exists()
    assert (out / "notes.txt").read_text() == "the user's"


def test_a_new_folder_is_the_staged_one_renamed(tmp_path):
    out = tmp_path / "txt"
    (tmp_path / "x").mkdir()
    staged = new_temporary_dir(out)
    (staged / "cameras.txt").write_text("c")
    move_into(staged, out, ["cameras.txt"])
    assert not staged.exists() and (out / "cameras.txt").read_text() == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["txt", "x"]
