"""The errors a user's input can cause: each one line naming the key, file or line at fault, shown by the `mtl`
command as `error: ...` with exit status 2 (`mtl.cli`)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


def error_line(err: BaseException) -> str:
    """The one-line message of an error, also when a DataLoader worker re-raised it with the worker's traceback
    ("Caught DataError in DataLoader worker process 0. Original Traceback ... mtl.errors.DataError: <message>")."""
    text = str(err).strip()
    if "Original Traceback" not in text:
        return text
    _, colon, message = text.splitlines()[-1].partition(": ")
    return message if colon else text.splitlines()[-1]
