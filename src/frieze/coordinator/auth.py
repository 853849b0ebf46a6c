"""API tokens and roles.

Tokens are 256-bit random strings prefixed ``frz_``; only their SHA-256 is stored. Roles are ordered:
``read-only`` < ``operator`` < ``admin``. The bootstrap admin token is written once, at first start, to a
0600 file in the state directory; it is never logged or printed by the server.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from sqlalchemy import select

from frieze.coordinator.catalog.db import Catalog
from frieze.coordinator.catalog.models import ApiToken
from frieze.core.errors import AuthError, Forbidden, NotFound, UsageError
from frieze.core.ids import new_id

ROLES = ("read-only", "operator", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in _RANK:
        raise UsageError(f"unknown role {role!r}; one of {', '.join(ROLES)}", role=role)
    return role


def allows(have: str, need: str) -> bool:
    """Whether a token of role ``have`` may do what needs ``need``."""
    return _RANK[have] >= _RANK[need]


class Tokens:
    """Create, verify and revoke API tokens."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def create(self, name: str, role: str) -> tuple[str, str]:
        """A new token; returns (token id, the token itself, shown once)."""
        check_role(role)
        token = "frz_" + secrets.token_urlsafe(32)
        tid = new_id("tok")
        with self.catalog.session() as s:
            s.add(ApiToken(id=tid, name=name, role=role, token_hash=token_hash(token)))
        return tid, token

    def verify(self, token: str | None) -> ApiToken:
        """The token's record; AuthError when absent, unknown or revoked (one message for all)."""
        if not token:
            raise AuthError("an API token is required (Authorization: Bearer <token>)")
        h = token_hash(token)
        with self.catalog.session() as s:
            rec = s.scalar(select(ApiToken).where(ApiToken.token_hash == h))
            if rec is None or rec.revoked or not hmac.compare_digest(rec.token_hash, h):
                raise AuthError("the API token is not valid")
            s.expunge(rec)
            return rec

    def require(self, token: str | None, need: str) -> ApiToken:
        rec = self.verify(token)
        if not allows(rec.role, need):
            raise Forbidden(f"role {rec.role!r} may not do this; it needs {need!r}", role=rec.role, needs=need)
        return rec

    def list(self) -> list[ApiToken]:
        with self.catalog.session() as s:
            rows = list(s.scalars(select(ApiToken).order_by(ApiToken.created_at)))
            for r in rows:
                s.expunge(r)
            return rows

    def revoke(self, tid: str) -> None:
        with self.catalog.session() as s:
            rec = s.get(ApiToken, tid)
            if rec is None:
                raise NotFound(f"token {tid!r} does not exist", token_id=tid)
            rec.revoked = True

    def bootstrap(self, path: Path) -> bool:
        """On first start (no token at all), write an admin token to ``path`` (0600). True if written."""
        with self.catalog.session() as s:
            if s.scalar(select(ApiToken.id).limit(1)) is not None:
                return False
        _tid, token = self.create("bootstrap-admin", "admin")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
        finally:
            os.close(fd)
        return True
