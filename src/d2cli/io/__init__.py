"""File formats: one reader/writer for features, matches and pairs."""

from .features import FeatureFile, Features, MatchFile, matches_to_arrays, pair_key
from .h5store import H5Store, list_entries, open_h5, read_attrs
from .pairs import read_pairs, write_pairs

__all__ = [
    "Features", "FeatureFile", "MatchFile", "matches_to_arrays", "pair_key",
    "H5Store", "list_entries", "open_h5", "read_attrs", "read_pairs", "write_pairs",
]
