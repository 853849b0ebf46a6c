"""Errors of the agent protocol, and the mapping of an error body back to the error tree's class."""

from __future__ import annotations

from typing import Any

from frieze.core import errors as E


class AgentUnreachable(E.FriezeError):
    """The agent could not be reached (connection refused or reset, TLS handshake failed, timeout)."""

    code = "agent.unreachable"
    exit_code = 15
    http_status = 503
    retryable = True


class AgentProtocolError(E.FriezeError):
    """The agent answered something that is not the protocol (no error body, unparsable JSON)."""

    code = "agent.protocol"
    exit_code = 15
    http_status = 502


_BY_STATUS: dict[int, type[E.FriezeError]] = {
    400: E.UsageError, 401: E.AuthError, 403: E.Forbidden, 404: E.NotFound, 409: E.Conflict,
    429: E.Busy, 501: E.NotSupported, 504: E.DeadlineExceeded,
}


def _by_code() -> dict[str, type[E.FriezeError]]:
    out = {c.code: c for c in E.all_error_classes()}
    out[AgentUnreachable.code] = AgentUnreachable
    out[AgentProtocolError.code] = AgentProtocolError
    return out


def error_from_body(body: dict[str, Any], status: int = 500) -> E.FriezeError:
    """The :class:`FriezeError` an error body names (same class for a known code; for a plug-in's own code,
    the nearest class by HTTP status, with ``details["code"]`` = the original code)."""
    code = str(body.get("code", ""))
    message = str(body.get("message", "")) or f"agent error {code or status}"
    details = dict(body.get("details") or {})
    cls = _by_code().get(code)
    if cls is None:
        details.setdefault("code", code)
        cls = _BY_STATUS.get(status, E.FriezeError)
    return cls(message, **details)
