"""The one answer to "were these files made with the same model and settings?".

Every features file records ``model``, ``model_sha256`` and ``settings`` (a dict) in its
attributes; matches files record their features' attributes and their own settings.
Extraction (resuming into a file), matching, ``colmap-import`` and ``merge`` all compare
them here, so that the rule and the message are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROVENANCE_KEYS = ("model_sha256", "settings")


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *,
                keys: Sequence[str] = PROVENANCE_KEYS, both_recorded: bool = False,
                arrow: str = " -> ") -> list[str]:
    """What differs between two files' attributes, one ``"what: old -> new"`` line each.

    ``settings``-like dicts are compared key by key. With ``both_recorded`` only what
    both files record is compared (a foreign file without attributes passes); otherwise
    a value recorded on one side only is a difference. ``arrow`` is ``" vs "`` for two
    peers (features of both sides of a pair) rather than an old and a new file.
    """
    out: list[str] = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if a == b or (both_recorded and (not a or not b)):
            continue
        if k == "model_sha256":
            out.append(f"model: {old.get('model')} ({str(a)[:12]}){arrow}"
                       f"{new.get('model')} ({str(b)[:12]})")
        elif isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{sk}: {a.get(sk)}{arrow}{b.get(sk)}" for sk in sorted(set(a) | set(b))
                    if a.get(sk) != b.get(sk)]
        else:
            out.append(f"{k}: {a}{arrow}{b}")
    return out
