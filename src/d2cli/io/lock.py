"""One writer at a time: an advisory lock file (flock), freed by the kernel on SIGKILL."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError, OutputLocked


@contextmanager
def exclusive_lock(lock_path: Path, busy: str, unwritable: str, remove: bool = True) -> Iterator[None]:
    """Hold ``lock_path`` exclusively, or raise OutputLocked(busy) at once (no waiting).

    ``unwritable`` is the message (the OS reason is appended) when the lock file cannot be
    created; ``remove`` deletes the lock file on a clean release.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never a planted link
    except OSError as e:
        raise OutputError(f"{unwritable} ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputLocked(busy) from None
    try:
        yield
    finally:
        if remove:
            lock_path.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
