"""The freeze guardian's wire protocol: JSON lines over a unix stream socket.

One request per line, one response per line, in order, on one connection::

    -> {"id": 7, "op": "freeze_fs", "mount": "/srv/data", "lease_s": 10, "epoch": 42}
    <- {"id": 7, "ok": true, "result": {"freeze_id": "f-...", ...}}
    <- {"id": 8, "ok": false, "error": {"code": "stale_epoch", "message": "...", "details": {...}}}

Errors carry the stable ``code`` of :mod:`frieze.core.errors`; the client raises the matching class.
The full protocol, with its invariants, is ``docs/design/freeze-guardian.md``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from frieze.core.errors import FriezeError, InternalError, UsageError, all_error_classes

PROTOCOL_VERSION = 1
#: Default leases (seconds).
DEFAULT_FS_LEASE_S = 10.0
DEFAULT_APP_LEASE_S = 60.0
#: No lease may be longer than this (a typo of 36000 for 3.6 must not freeze a host for 10 hours).
MAX_LEASE_S = 3600.0
#: Longest accepted request line (bytes).
MAX_LINE = 1 << 20

OPS = ("hello", "freeze_fs", "quiesce_app", "commit", "thaw", "status")


def encode(msg: dict[str, Any]) -> bytes:
    """One JSON line. Values JSON cannot carry (a plug-in's datetime, bytes...) are sent as their ``str``."""
    return json.dumps(msg, separators=(",", ":"), sort_keys=True, default=str).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"guardian: a request is not valid JSON ({e})") from e
    if not isinstance(msg, dict):
        raise UsageError("guardian: a request must be a JSON object")
    return msg


def check_lease(lease_s: Any, default: float, what: str) -> float:
    """The lease to use: ``default`` when None; > 0 and <= MAX_LEASE_S, else UsageError."""
    if lease_s is None:
        return default
    if isinstance(lease_s, bool) or not isinstance(lease_s, int | float) or math.isnan(lease_s):
        raise UsageError(f"guardian: the lease of {what} must be a number of seconds, got {lease_s!r}",
                         lease_s=str(lease_s))
    if lease_s <= 0:
        raise UsageError(f"guardian: the lease of {what} must be > 0 seconds, got {lease_s!r}", lease_s=lease_s)
    if lease_s > MAX_LEASE_S:
        raise UsageError(f"guardian: the lease of {what} must be at most {MAX_LEASE_S:g} s, got {lease_s!r}",
                         lease_s=lease_s)
    return float(lease_s)


def check_epoch(epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UsageError(f"guardian: the epoch must be an integer >= 0, got {epoch!r}", epoch=str(epoch))
    return epoch


def error_to_wire(e: BaseException) -> dict[str, Any]:
    if isinstance(e, FriezeError):
        return e.to_dict()
    return InternalError(f"guardian: {type(e).__name__}: {e}").to_dict()


_BY_CODE = {c.code: c for c in all_error_classes()}


def error_from_wire(err: dict[str, Any]) -> FriezeError:
    cls = _BY_CODE.get(str(err.get("code")), FriezeError)
    details = err.get("details") or {}
    return cls(str(err.get("message") or cls.code), **(details if isinstance(details, dict) else {}))
