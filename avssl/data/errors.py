"""The data package's own error: the shards do not hold what the manifest promised (a
missing shard, too many samples lost, a test split that lost clips). The CLI reports it as
one line and exits with status 1."""
from __future__ import annotations


class DataError(RuntimeError):
    """The data cannot support the run as asked (the message says what was lost and the fix)."""


__all__ = ["DataError"]
