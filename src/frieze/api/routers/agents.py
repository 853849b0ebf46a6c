"""The agent-facing calls: enrollment (one-time token) and heartbeat (client certificate only).

These are the only calls an agent can make. On the agent port (mutual TLS) the verified certificate names
the host; a certificate never grants anything on the token-protected API, and a token never passes here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from frieze.api import schemas as S
from frieze.api.deps import Coord
from frieze.api.tls import peer_identity
from frieze.core.errors import AuthError

router = APIRouter(prefix="/v1/agents", tags=["agents"])


class Heartbeat(BaseModel):
    version: str = Field(min_length=1, max_length=50)
    address: str | None = Field(default=None, max_length=300)


@router.post("/heartbeat", response_model=S.Host, summary="Agent heartbeat (client certificate required)")
def heartbeat(body: Heartbeat, request: Request, coord: Coord) -> dict[str, Any]:
    ident = peer_identity(request.scope)
    if ident is None:
        raise AuthError("agents authenticate with their client certificate only")
    cn, fp = ident
    return coord.registry.heartbeat(cn, fp, body.version, body.address)
