"""COLMAP's pixel convention (d2cli.colmap.keypoints) against a real pycolmap database."""

import numpy as np
import pycolmap

from d2cli.colmap.database import open_database
from d2cli.colmap.keypoints import from_colmap, to_colmap, write_keypoints


def test_round_trip_through_a_database_keeps_dtype_and_the_half_pixel(tmp_path):
    xy = np.array([[0.0, 0.0], [639.25, 479.75], [10.5, 3.0]], dtype=np.float32)
    assert to_colmap(xy).dtype == np.float32 and np.array_equal(to_colmap(xy)[0], [0.5, 0.5])
    assert np.array_equal(from_colmap(to_colmap(xy)), xy)
    with open_database(tmp_path / "db.db") as db:
        cam = db.write_camera(pycolmap.Camera.create_from_model_id(0, 1, 100.0, 640, 480))
        image_id = db.write_image(pycolmap.Image(name="a.jpg", camera_id=cam))
        scored = np.concatenate([xy, np.ones((3, 2), np.float32)], axis=1)  # (N, 4) as in files
        write_keypoints(db, image_id, scored)
        stored = np.asarray(db.read_keypoints(image_id))[:, :2]
        assert stored.dtype == np.float32 and np.array_equal(stored, xy + 0.5)
        write_keypoints(db, image_id, xy[:2] - 1, replace=True)
        assert np.array_equal(from_colmap(np.asarray(db.read_keypoints(image_id))[:, :2]),
                              xy[:2] - 1)
