"""Administration: API tokens and vault key rotation."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from frieze.api import schemas as S
from frieze.api.deps import Admin, Coord
from frieze.core.clock import iso

router = APIRouter(prefix="/v1", tags=["admin"])


def _tok(t: Any) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "role": t.role, "created_at": iso(t.created_at), "revoked": t.revoked}


@router.post("/tokens", status_code=201, response_model=S.TokenCreated, dependencies=[Admin])
def create_token(body: S.TokenCreate, coord: Coord) -> dict[str, Any]:
    tid, secret = coord.tokens.create(body.name, body.role)
    rec = next(t for t in coord.tokens.list() if t.id == tid)
    return {"token": _tok(rec), "secret": secret}


@router.get("/tokens", response_model=list[S.Token], dependencies=[Admin])
def list_tokens(coord: Coord) -> list[dict[str, Any]]:
    return [_tok(t) for t in coord.tokens.list()]


@router.delete("/tokens/{token_id}", status_code=204, dependencies=[Admin])
def revoke_token(token_id: str, coord: Coord) -> Response:
    coord.tokens.revoke(token_id)
    return Response(status_code=204)


@router.post("/vault/rotate", response_model=S.VaultRotated, dependencies=[Admin])
def rotate(coord: Coord) -> dict[str, Any]:
    return coord.secrets.rotate()
