"""``d2 train``."""

from __future__ import annotations

import click

from . import main
from .common import command, finish, json_option, print_json, progress, quiet_option, summary_table


@main.command("train")
@click.argument("data", nargs=-1, required=True, type=str)
@click.option("--out", "-o", required=True, help="Folder for checkpoints, state and log.")
@click.option("--model", "-m", "init", default=None,
              help="Starting weights: name or .pth path [default: built-in].")
@click.option("--train-layers", default="conv4_3", show_default=True,
              help="Layers to train: conv4_3 (the paper), conv4, 'conv3_3,conv4', all.")
@click.option("--lr", default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--steps-per-epoch", default=500, show_default=True)
@click.option("--batch-size", default=1, show_default=True, help="Image pairs per step.")
@click.option("--crop", default=256, show_default=True, help="Crop size (multiple of 8).")
@click.option("--margin", default=1.0, show_default=True)
@click.option("--safe-radius", default=4, show_default=True, help="In feature cells (8 px).")
@click.option("--min-matches", type=int,
              help="Fewest correspondences of a usable pair [default: 128; 16 for COLMAP tracks].")
@click.option("--val-pairs", default=32, show_default=True, help="Fixed validation pairs.")
@click.option("--val-fraction", default=0.1, show_default=True,
              help="Fraction of each source's images/pairs held out for validation.")
@click.option("--seed", default=1, show_default=True)
@click.option("--preprocessing", type=click.Choice(["caffe", "torch", "none"]), default="caffe",
              show_default=True)
@click.option("--max-edge", default=1024, show_default=True,
              help="Resize COLMAP / homography images to fit.")
@click.option("--photometric", type=float,
              help="Photometric change strength, 0..1 [default: 1 homography, 0 otherwise].")
@click.option("--checkpoint-every", default=50, show_default=True, help="Steps between saves.")
@click.option("--relu-descriptors", is_flag=True,
              help="Loss on ReLU'd descriptors, as matched at test time (reference: raw).")
@click.option("--spread", default=0.0, show_default=True,
              help="Weight of a spread-out regulariser against descriptor collapse (paper: 0).")
@click.option("--warp", default=1.0, show_default=True,
              help="Homography sources: scale the random homographies (angles, zoom, tilt).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="fp32",
              show_default=True,
              help="Of the network's forward and backward pass (bf16 autocast; the loss stays "
                   "fp32). auto: bf16 where the CPU runs it fast.")
@click.option("--max-steps", type=int, help="Stop after N steps in this run; re-run to go on.")
@click.option("--overwrite", is_flag=True, help="Start again, discarding a run in --out.")
@quiet_option
@json_option
@command
def train_cmd(data, out, init, train_layers, lr, epochs, steps_per_epoch, batch_size, crop, margin,
              safe_radius, min_matches, val_pairs, val_fraction, seed, preprocessing, max_edge,
              photometric, checkpoint_every, relu_descriptors, spread, warp, precision, max_steps,
              overwrite, quiet, as_json) -> int:
    """Fine-tune D2-Net on DATA folders as the paper (stride 8, soft detection, margin loss).

    \b
    DATA is [KIND:]FOLDER, KIND guessed when left out:
      depth:      COLMAP model (sparse/) + images/ + depths/ (MegaDepth-style)
      colmap:     COLMAP model (sparse/ or the folder) + images/: 3D point tracks
      homography: any folder of images: random homographies + photometric changes
    Re-running with the same options resumes a killed or --max-steps run exactly.
    """
    from ..train import TrainSettings, train
    from ..weights import DEFAULT_MODEL

    settings = TrainSettings(
        data=tuple(data), init=init or DEFAULT_MODEL, train_layers=train_layers, lr=lr,
        epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, crop=crop,
        margin=margin, safe_radius=safe_radius, min_matches=min_matches, val_pairs=val_pairs,
        val_fraction=val_fraction, seed=seed, preprocessing=preprocessing, max_edge=max_edge,
        photometric=photometric, checkpoint_every=checkpoint_every,
        relu_descriptors=relu_descriptors, spread=spread, warp=warp, precision=precision)
    with progress(quiet or as_json) as show:
        result = train(settings, out, overwrite=overwrite, max_steps=max_steps, progress=show)
    s = result.summary()
    if as_json:
        print_json(s)
    else:
        vals = ", ".join(f"{e}: {v:.4f}" for e, v in sorted(result.val_losses.items()))
        summary_table(f"d2 train -> {out}", [
            ("steps", f"{s['steps']} of {settings.epochs * settings.steps_per_epoch}"
                      f" (this run from {s['resumed_from']})"),
            ("trained layers", ", ".join(s["trainable"])),
            ("last loss", "-" if s["last_loss"] is None else f"{s['last_loss']:.4f}"),
            ("validation loss by epoch", vals or "-"),
            ("best epoch", s["best_epoch"] if s["best_epoch"] is not None else "-"),
            ("skipped pairs", s["skipped_samples"]),
            ("final model", s["final"] or "not yet (re-run to go on)"),
            ("time", f"{s['seconds']:.1f} s"),
        ])
    return finish(result)
