"""Benchmarks that tell a good model from a bad one (``d2 eval``).

``hpatches``: the HPatches-sequences mean matching accuracy of the D2-Net paper.
``pose``: relative-pose AUC on image pairs with known cameras.
``methods``: the feature sources they compare (D2-Net models through the extract job,
COLMAP SIFT through pycolmap) and the cached work directory. ``plots``: the figures.
"""
