"""``d2 pairs exhaustive | sequential | from-model | from-poses | from-retrieval``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..settings import NUM_MATCHED, SEQUENTIAL_OVERLAP
from . import main
from .common import command, done_line, json_option, options, query_ref_options


@main.group("pairs")
def pairs_group() -> None:
    """Write a pairs file (one 'name0 name1' per line) for d2 match."""


pairs_out = options(
    click.option("--out", "-o", default="pairs.txt", show_default=True, help="Pairs file to write."),
    json_option,
)

image_names_source = options(
    click.option("--features", "-f", default="feats.h5", show_default=True,
                 help="Features file whose image names are paired."),
    click.option("--image-list", type=click.Path(),
                 help="Take the names from this file (one per line) instead."),
)


def _save(pairs: Any, out: str, method: str, as_json: bool, unique: bool = False) -> int:
    from ..pairs import save_pairs

    s = save_pairs(pairs, out, method, unique=unique).summary()
    return done_line(s, as_json, f"d2 pairs {s['method']}: {s['pairs']} pairs of {s['images']} "
                                 f"images -> {s['out']}")


def _queries_refs(names: list[str], query_prefix, query_list, ref_prefix, ref_list) -> tuple:
    from ..pairs import select_names

    return (select_names(names, query_prefix, query_list, "query"),
            select_names(names, ref_prefix, ref_list, "ref"))


def _model_pairs(name: str, help_k: str) -> Callable[[Callable[..., Any]], Any]:
    return options(
        pairs_group.command(name),
        click.argument("model_dir", type=click.Path()),
        click.option("--num-matched", "-k", default=NUM_MATCHED, show_default=True, help=help_k),
    )


@pairs_group.command("exhaustive")
@image_names_source
@query_ref_options
@pairs_out
@command
def pairs_exhaustive_cmd(features, image_list, query_prefix, query_list, ref_prefix, ref_list,
                         out, as_json) -> int:
    """Every pair of images; or every query with every reference.

    With only queries (or only references) chosen, the other side is all other images.
    """
    from ..pairs import image_names, iter_pairs_exhaustive

    names = image_names(features, image_list)
    queries, refs = _queries_refs(names, query_prefix, query_list, ref_prefix, ref_list)
    # streamed into the file: memory flat in the number of pairs (N^2 / 2)
    return _save(iter_pairs_exhaustive(names, queries, refs), out, "exhaustive", as_json,
                 unique=True)


@pairs_group.command("sequential")
@image_names_source
@click.option("--overlap", "-k", default=SEQUENTIAL_OVERLAP, show_default=True,
              help="Pair each image with the next K in name order.")
@pairs_out
@command
def pairs_sequential_cmd(features, image_list, overlap, out, as_json) -> int:
    """Each image with the next K images in name order (video, ordered captures)."""
    from ..pairs import image_names, pairs_sequential

    return _save(pairs_sequential(image_names(features, image_list), overlap), out, "sequential",
                 as_json)


@_model_pairs("from-model", "Pair each image with the K images sharing most 3D points.")
@pairs_out
@command
def pairs_from_model_cmd(model_dir, num_matched, out, as_json) -> int:
    """Covisibility pairs from an existing COLMAP model in MODEL_DIR."""
    from ..pairs import pairs_from_model

    return _save(pairs_from_model(model_dir, num_matched), out, "from-model", as_json)


@_model_pairs("from-poses", "Pair each image with the K nearest camera centres.")
@click.option("--max-angle", default=30.0, show_default=True,
              help="Only cameras whose viewing directions differ by less (degrees).")
@click.option("--any-angle", is_flag=True, help="No viewing-direction limit.")
@pairs_out
@command
def pairs_from_poses_cmd(model_dir, num_matched, max_angle, any_angle, out, as_json) -> int:
    """Nearest-camera pairs from the poses of a COLMAP model in MODEL_DIR (as hloc)."""
    from ..pairs import pairs_from_poses

    pairs = pairs_from_poses(model_dir, num_matched, None if any_angle else max_angle)
    return _save(pairs, out, "from-poses", as_json)


@pairs_group.command("from-retrieval")
@click.option("--features", "-f", type=click.Path(),
              help="Use the global descriptors of this features file (d2 extract writes them; "
                   "d2 global adds them to older files).")
@click.option("--descriptors", "-d", type=click.Path(),
              help="Or: global descriptors of another tool (hloc layout: "
                   "<name>/global_descriptor), e.g. NetVLAD.")
@click.option("--num-matched", "-k", default=NUM_MATCHED, show_default=True,
              help="Pair each query with its K most similar references.")
@query_ref_options
@click.option("--min-score", default=0.0, show_default=True,
              help="Do not pair below this cosine similarity.")
@click.option("--whiten", is_flag=True,
              help="Whiten the descriptors first (PCA learned from the references).")
@pairs_out
@command
def pairs_from_retrieval_cmd(features, descriptors, num_matched, query_prefix, query_list,
                             ref_prefix, ref_list, min_score, whiten, out, as_json) -> int:
    """Top-K retrieval pairs from global descriptors (as hloc's pairs_from_retrieval).

    Without --query-*/--ref-* every image is paired with its K nearest other images.
    """
    from ..errors import UsageError
    from ..pairs import pairs_from_retrieval, read_feature_global_descriptors, read_global_descriptors

    if (features is None) == (descriptors is None):
        raise UsageError("give one of --features (d2's own global descriptors) or "
                         "--descriptors (another tool's)")
    names, desc = (read_feature_global_descriptors(features) if features
                   else read_global_descriptors(descriptors))
    queries, refs = _queries_refs(names, query_prefix, query_list, ref_prefix, ref_list)
    pairs = pairs_from_retrieval(names, desc, num_matched, queries, refs, min_score, whiten)
    return _save(pairs, out, "from-retrieval", as_json)
