"""Errors whose message is the whole story: the CLIs print them as one line and exit 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user has to fix (a file, line, key or flag and what was expected)."""


class ConfigError(UserError, ValueError):
    """A config file, argument or override the user has to fix."""


class DataError(UserError, ValueError):
    """A problem with the user's data, with the file/line/field that caused it."""


class CheckpointError(UserError, ValueError):
    """A checkpoint, export or weight file that cannot be used as it is."""
