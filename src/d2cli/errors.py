"""Every user-facing failure of d2cli, with its exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``;
nothing else in the package decides exit codes.

Exit codes (documented in the README for shell scripts):

====  ==========================================================
 0    everything was done
 1    the command ran, but some items (images, pairs, queries) failed
 2    usage or set-up error: bad option, missing/corrupt input, unknown model,
      unwritable output, empty input, output locked by another run, every
      input failed (nothing written)
 3    internal error (a bug; D2CLI_DEBUG=1 shows the traceback)
 130  interrupted (Ctrl-C / SIGTERM); finished work is saved, re-run to resume
====  ==========================================================
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


def check_some_done(result: Any, done: int, what: str) -> None:
    """Raise :class:`NothingDone` when every item of a batch failed (none done before either).

    One bad item costs only itself (exit 1), but a run where all failed is a set-up problem
    (a wrong folder, a list that resolves nowhere): say so, and leave no empty output.
    """
    if result.failed and not done and not result.interrupted:
        reasons = list(result.failed.values())
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        raise NothingDone(f"all {len(reasons)} {what} failed, nothing was written ({shown})")


def exit_status(result: Any) -> int:
    """A job result's exit code: 130 if interrupted, 1 if some items failed, else 0."""
    if getattr(result, "interrupted", False):
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if result.failed else EXIT_OK


class D2Error(Exception):
    """Base class: a one-line message for the user and an exit code."""

    exit_code = EXIT_USAGE


class UsageError(D2Error):
    """Bad or inconsistent options."""


class InputNotFound(D2Error):
    """A file or folder the user named does not exist."""


class EmptyInput(D2Error):
    """Nothing to do: no images, no pairs."""


class BadImage(D2Error):
    """An image that cannot be decoded (reported per image, the batch goes on)."""


class UnknownModel(D2Error):
    """A model name that is neither built in, cached, nor an existing file."""


class BadCheckpoint(D2Error):
    """A weights file that is missing, corrupt or not a D2-Net checkpoint."""


class DownloadFailed(D2Error):
    """A download that could not complete (network, HTTP error); re-running resumes it."""


class BadFile(D2Error):
    """A features/matches/pairs/model file that is unreadable or malformed."""


class MissingName(D2Error):
    """A name (image, pair) that is not in the file it should be in."""


class OutputError(D2Error):
    """The output cannot be written (permissions, a directory in the way...)."""


class OutputLocked(D2Error):
    """Another d2 process is writing the same output."""


class IncompatibleFeatures(D2Error):
    """Features made with different models or settings would be mixed."""


class NothingDone(D2Error):
    """Every input of a batch failed: nothing was written (exit 2, not "some failed")."""


class PartialFailure(D2Error):
    """Some items failed; the rest were done."""

    exit_code = EXIT_PARTIAL
