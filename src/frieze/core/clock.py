"""Clocks. Wall time for labels and retention, a monotonic clock for leases and deadlines.

Leases and timeouts must use :func:`monotonic` (never the wall clock, which can jump).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> datetime:
    """Current wall-clock time, timezone-aware UTC."""
    return datetime.now(UTC)


def monotonic() -> float:
    """Seconds on a clock that never goes backwards (for leases and deadlines)."""
    return time.monotonic()


def iso(dt: datetime) -> str:
    """RFC 3339 text of a timezone-aware datetime, in UTC, with microseconds."""
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Parse RFC 3339 text (``Z`` or an offset) into an aware datetime."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt
