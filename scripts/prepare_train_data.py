"""Build the training data of the built-in model ``d2cli-v1`` (one-off, not a runtime need).

    python scripts/prepare_train_data.py OUT [--skimage-wheel scikit_image-0.26.0-*.whl]

Writes
    OUT/photos/      10 Sacre-Coeur photos (src/d2cli/data/sacre_coeur) + 6 freely licensed
                     photos from the scikit-image 0.26.0 wheel + matplotlib's grace_hopper.jpg
                     (the data of d2cli-v1: ``d2 train OUT/photos``, recipe in
                     src/d2cli/weights/PROVENANCE.md)
    OUT/sacre_coeur/ the 10 Sacre-Coeur photos in images/ and a COLMAP model of them in
                     sparse/0 (pycolmap SIFT, exhaustive matching, incremental mapping), a
                     COLMAP-tracks source; it made HPatches worse (docs/benchmarks.md)

The scikit-image wheel is only unzipped (get it with ``pip download scikit-image==0.26.0
--no-deps``); nothing is installed. See src/d2cli/weights/PROVENANCE.md for the licences.
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import matplotlib
import pycolmap

import d2cli

# name in the wheel -> licence note (from the scikit-image docstrings)
SKIMAGE = {
    "astronaut.png": "public domain (NASA)",
    "camera.png": "CC0 (Lav Varshney)",
    "chelsea.png": "CC0 (Stefan van der Walt)",
    "coffee.png": "CC0 (Rachel Michetti)",
    "rocket.jpg": "public domain (SpaceX)",
    "coins.png": "no known copyright restrictions (Brooklyn Museum)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--skimage-wheel", type=Path, help="scikit_image-0.26.0 wheel to unzip")
    args = ap.parse_args()
    sacre = Path(d2cli.__file__).parent / "data" / "sacre_coeur"
    photos = args.out / "photos"
    scene = args.out / "sacre_coeur"
    for d in (photos, scene / "images"):
        d.mkdir(parents=True, exist_ok=True)
    for jpg in sorted(sacre.glob("*.jpg")):
        shutil.copyfile(jpg, photos / jpg.name)
        shutil.copyfile(jpg, scene / "images" / jpg.name)
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    shutil.copyfile(hopper, photos / "mpl_grace_hopper.jpg")
    if args.skimage_wheel:
        with zipfile.ZipFile(args.skimage_wheel) as z:
            for name in SKIMAGE:
                (photos / f"skimage_{name}").write_bytes(z.read(f"skimage/data/{name}"))
    # a sparse model of the Sacre-Coeur photos: correspondences from 3D point tracks
    db = scene / "database.db"
    db.unlink(missing_ok=True)
    pycolmap.extract_features(db, scene / "images", camera_mode=pycolmap.CameraMode.PER_IMAGE,
                              device=pycolmap.Device.cpu)
    pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
    maps = pycolmap.incremental_mapping(db, scene / "images", scene / "sparse")
    best = max(maps.values(), key=lambda r: r.num_reg_images())
    (scene / "sparse" / "0").mkdir(parents=True, exist_ok=True)
    best.write(scene / "sparse" / "0")
    print(best.summary())


if __name__ == "__main__":
    main()
