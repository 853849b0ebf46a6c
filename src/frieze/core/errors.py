"""The one error tree of frieze.

Every error frieze raises on purpose is a :class:`FriezeError`. Each class carries, as plain data,

- ``code``: a stable, dotted identifier (never renamed once released; scripts match on it),
- ``exit_code``: what the CLI exits with (projected in one place: ``frieze.cli.errors``),
- ``http_status``: what the API answers with (projected in one place: ``frieze.api.errors``),
- ``retryable``: whether the same call may succeed if simply tried again later.

Third-party exceptions are translated at the boundary that calls the library (blob stores, plug-ins),
never passed through raw. Messages must name the problem and the object involved, and must never
contain a secret.

    FriezeError
    ├── UsageError            bad input from the caller (arguments, configuration)
    │   ├── NotFound          the named thing does not exist
    │   ├── AlreadyExists     create-if-absent found something there
    │   └── Conflict          the request contradicts current state (busy, exists, stale epoch)
    │       └── StaleEpoch    a freeze/lease epoch that is no longer current
    ├── AuthError             who you are is not established
    │   ├── WrongPassword     a key slot could not be opened
    │   └── Forbidden         you are known but not allowed
    ├── IntegrityError        stored data failed a check (MAC, hash, structure): fail closed
    ├── FormatError           a format we cannot read (damaged config, newer version)
    ├── StorageError          the storage below failed
    │   ├── NoSpace           ENOSPC / quota
    │   └── TransientStorageError   timeouts, throttling, connection resets (retryable)
    ├── NotSupported          a plug-in or provider does not support that call
    ├── LeaseExpired          a lease ran out before the work committed
    ├── Cancelled             the operation was cancelled
    ├── TimeoutError_         a deadline passed
    └── InternalError         a bug: an invariant of our own was broken
"""

from __future__ import annotations

from typing import Any, ClassVar


class FriezeError(Exception):
    """An error of frieze."""

    code: ClassVar[str] = "frieze.error"
    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip().splitlines()[0]
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The public projection of this error (no secrets, no tracebacks)."""
        return {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "details": {k: _plain(v) for k, v in self.details.items()},
        }


def _plain(v: Any) -> Any:
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


class UsageError(FriezeError):
    """Bad input."""

    code = "usage"
    exit_code = 2
    http_status = 400


class NotFound(UsageError):
    """Not found."""

    code = "not_found"
    exit_code = 3
    http_status = 404


class AlreadyExists(UsageError):
    """Already exists."""

    code = "already_exists"
    exit_code = 4
    http_status = 409


class Conflict(UsageError):
    """Conflicts with the current state."""

    code = "conflict"
    exit_code = 4
    http_status = 409


class Busy(Conflict):
    """The resource is busy; try again later."""

    code = "busy"
    retryable = True
    http_status = 429


class StaleEpoch(Conflict):
    """The epoch given is no longer current."""

    code = "stale_epoch"


class AuthError(FriezeError):
    """Not authenticated."""

    code = "auth"
    exit_code = 5
    http_status = 401


class WrongPassword(AuthError):
    """Wrong password: no key slot opens with it."""

    code = "auth.wrong_password"


class Forbidden(AuthError):
    """Not allowed."""

    code = "auth.forbidden"
    http_status = 403


class IntegrityError(FriezeError):
    """Stored data failed an integrity check."""

    code = "integrity"
    exit_code = 6
    http_status = 500


class FormatError(FriezeError):
    """Unreadable format."""

    code = "format"
    exit_code = 7
    http_status = 500


class StorageError(FriezeError):
    """The storage failed."""

    code = "storage"
    exit_code = 8
    http_status = 503


class NoSpace(StorageError):
    """No space left on the storage (ENOSPC)."""

    code = "storage.no_space"
    exit_code = 9
    http_status = 507


class TransientStorageError(StorageError):
    """A transient storage failure; retry."""

    code = "storage.transient"
    retryable = True


class NotSupported(FriezeError):
    """Not supported."""

    code = "not_supported"
    exit_code = 10
    http_status = 501


class LeaseExpired(FriezeError):
    """A lease expired before the work committed."""

    code = "lease_expired"
    exit_code = 11
    http_status = 409
    retryable = True


class Cancelled(FriezeError):
    """The operation was cancelled."""

    code = "cancelled"
    exit_code = 12
    http_status = 409


class DeadlineExceeded(FriezeError):
    """A deadline passed."""

    code = "deadline_exceeded"
    exit_code = 13
    http_status = 504
    retryable = True


class InternalError(FriezeError):
    """Internal error (a bug)."""

    code = "internal"
    exit_code = 70
    http_status = 500


def all_error_classes() -> list[type[FriezeError]]:
    """Every class of the tree, root first (used by the projections and their tests)."""
    out: list[type[FriezeError]] = []
    stack: list[type[FriezeError]] = [FriezeError]
    while stack:
        c = stack.pop(0)
        out.append(c)
        stack.extend(c.__subclasses__())
    return out
