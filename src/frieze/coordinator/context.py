"""The running coordinator of this process, for workflow tasks (which are module-level functions run by
the engine and get only their arguments and variables). One coordinator per process, like DBOS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from frieze.core.errors import InternalError

if TYPE_CHECKING:
    from frieze.coordinator.service import Coordinator

_current: Coordinator | None = None


def install(coord: Coordinator) -> None:
    global _current
    _current = coord


def uninstall(coord: Coordinator) -> None:
    global _current
    if _current is coord:
        _current = None


def current() -> Coordinator:
    if _current is None:
        raise InternalError("no coordinator is running in this process")
    return _current
