"""``d2 train``: fine-tune D2-Net as the paper does (stride-8 network, soft detection,
detection-weighted triplet margin loss), on depth scenes, COLMAP tracks or homographies.

Modules, one concern each: ``soft_detection`` (scores), ``loss`` (the loss), ``warp``
(ground-truth correspondences), ``augment`` (homographies, photometric changes),
``sources`` (the three kinds of data), ``trainer`` (the loop, checkpoints, resume).
"""

from .trainer import Trainer, TrainResult, TrainSettings, parse_layers, train

__all__ = ["TrainResult", "TrainSettings", "Trainer", "parse_layers", "train"]
