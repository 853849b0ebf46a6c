"""Enrollment, coordinator side: validate a one-time token, sign the agent's CSR (docs/design/agent-protocol.md §2).

The coordinator mounts :func:`enrollment_router` on its agent port (TLS, client certificate optional)::

    app.include_router(enrollment_router(CertificateAuthority.create(cfg.ca_dir),
                                         redeem=registry.redeem,
                                         on_issued=lambda host, fp: registry.set_fingerprint(host["id"], fp)))

``redeem(token, address, version)`` must consume the token (once) and return the host's view (a dict with at
least ``name``), or raise :class:`AuthError` for an unknown, used or expired token. The CSR is checked
*before* the token is redeemed, so a malformed request does not burn a token. The certificate's subject is
``CN=<registered host name>, OU=agent`` whatever the CSR asked for.

:class:`OneTimeTokens` is a small in-memory token store with the same ``redeem`` contract (tests, single-node
setups without the catalog).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from frieze.core.errors import AuthError, UsageError
from frieze.protocol.ca import ROLE_AGENT, CertificateAuthority, cert_pem, fingerprint
from frieze.protocol.models import EnrollRequest, EnrollResponse, valid_name

Redeem = Callable[[str, str | None, str | None], dict[str, Any]]
OnIssued = Callable[[dict[str, Any], str], None]


def _check_csr(csr_pem: str) -> None:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise UsageError(f"enrollment: the certificate request is not a PEM CSR ({e})") from e
    if not csr.is_signature_valid:
        raise UsageError("enrollment: the certificate request's signature does not verify")


def handle_enroll(req: EnrollRequest, ca: CertificateAuthority, redeem: Redeem, on_issued: OnIssued | None = None,
                  *, cert_days: int = 365) -> EnrollResponse:
    """Check the CSR, redeem the token, issue ``CN=<host>, OU=agent``. Nothing is issued on any error."""
    _check_csr(req.csr_pem)
    host = redeem(req.token, req.address, req.version)
    name = str(host.get("name", ""))
    if not valid_name(name):
        raise UsageError(f"enrollment: registered host name {name!r} cannot be a certificate name")
    cert = ca.issue(req.csr_pem, name, cert_days, role=ROLE_AGENT)
    fp = fingerprint(cert)
    if on_issued is not None:
        on_issued(host, fp)
    return EnrollResponse(host=name, cert_pem=cert_pem(cert).decode(), ca_pem=ca.cert_pem.decode(), fingerprint=fp)


def enrollment_router(ca: CertificateAuthority, redeem: Redeem, on_issued: OnIssued | None = None,
                      *, cert_days: int = 365) -> APIRouter:
    """``GET /v1/agents/ca`` (the CA certificate, PEM; public) and ``POST /v1/agents/enroll``."""
    router = APIRouter(prefix="/v1/agents", tags=["agents"])

    @router.get("/ca", response_class=PlainTextResponse, summary="The agents' CA certificate (PEM)")
    def get_ca() -> PlainTextResponse:
        return PlainTextResponse(ca.cert_pem.decode(), media_type="application/x-pem-file")

    @router.post("/enroll", response_model=EnrollResponse, summary="Enroll an agent with a one-time token")
    def enroll(body: EnrollRequest) -> EnrollResponse:
        return handle_enroll(body, ca, redeem, on_issued, cert_days=cert_days)

    return router


@dataclass
class _Tok:
    host: str
    expires: dt.datetime
    used: bool = False


class OneTimeTokens:
    """One-time enrollment tokens held as SHA-256 hashes only; :meth:`redeem` consumes a token once."""

    def __init__(self) -> None:
        self._by_hash: dict[str, _Tok] = {}
        self._lock = threading.Lock()
        self.issued: dict[str, str] = {}  # host -> fingerprint of the certificate issued

    @staticmethod
    def _h(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def new(self, host: str, ttl_s: float = 3600.0) -> str:
        if not valid_name(host):
            raise UsageError(f"invalid host name {host!r}", host=host)
        token = "enr_" + secrets.token_urlsafe(24)
        with self._lock:
            self._by_hash[self._h(token)] = _Tok(host, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl_s))
        return token

    def redeem(self, token: str, address: str | None = None, version: str | None = None) -> dict[str, Any]:
        with self._lock:
            rec = self._by_hash.get(self._h(token))
            if rec is None or rec.used or rec.expires < dt.datetime.now(dt.UTC):
                raise AuthError("the enrollment token is not valid (unknown, used or expired)")
            rec.used = True
            return {"name": rec.host, "id": rec.host, "address": address, "version": version}

    def record(self, host: dict[str, Any], fp: str) -> None:
        self.issued[str(host["name"])] = fp
