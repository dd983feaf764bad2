"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections alone.

Imported by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this folder is
on ``sys.path``).
"""

from __future__ import annotations

import os
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(heading: str, text: str, doc_path: Path = DOC) -> None:
    """Replace (or append) the section that starts with the line ``heading``; atomic."""
    doc = doc_path.read_text() if doc_path.exists() else "# Benchmarks\n"
    start = doc.find(heading + "\n")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        nxt = doc.find("\n## ", start + len(heading))
        doc = doc[:start] + text + (doc[nxt + 1:] if nxt >= 0 else "")
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc_path.with_name(doc_path.name + ".tmp")
    tmp.write_text(doc)
    os.replace(tmp, doc_path)
