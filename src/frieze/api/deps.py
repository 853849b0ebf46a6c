"""Typed dependencies: the coordinator of this app, and the API-token check with a minimum role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from frieze.coordinator.service import Coordinator

bearer = HTTPBearer(auto_error=False, description="API token (frz_...)")


def get_coordinator(request: Request) -> Coordinator:
    coord: Coordinator = request.app.state.coordinator
    return coord


Coord = Annotated[Coordinator, Depends(get_coordinator)]


def role(need: str) -> Callable[..., Any]:
    """A dependency that admits a valid token of at least role ``need`` (401 without, 403 below)."""

    def check(request: Request, coord: Coord,
              cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        rec = coord.tokens.require(cred.credentials if cred else None, need)
        request.state.token_id = rec.id
        return rec.role

    return check


ReadOnly = Depends(role("read-only"))
Operator = Depends(role("operator"))
Admin = Depends(role("admin"))
