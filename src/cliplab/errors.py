"""The error types a user's mistake raises.

Every error cliplab raises for bad input (a missing file, a malformed manifest, a checkpoint it will
not read, a setting out of range) derives from :class:`CliplabError`. Its message is one line that
names the file, line, key or flag and says what to do; the command line prints that line and exits
with status 2, and shows a traceback only with ``--debug``. Anything else escaping is a bug.
"""

from __future__ import annotations


class CliplabError(Exception):
    """A user-facing error: the message alone explains what was wrong and how to fix it."""


class UsageError(CliplabError, ValueError):
    """A setting, flag or argument is invalid (out of range, wrong type, a missing file or device)."""


class OutputExistsError(CliplabError, FileExistsError):
    """A command would write into a path that already holds something; nothing was touched."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
