"""Small helpers shared by the blob store implementations."""

from __future__ import annotations

from frieze.core.errors import UsageError


def check_range(key: str, offset: int, length: int | None) -> None:
    """Refuse a negative offset or length with UsageError naming the key."""
    if offset < 0 or (length is not None and length < 0):
        raise UsageError(f"bad range for blob {key!r}: offset={offset} length={length}", key=key)
