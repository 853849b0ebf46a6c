"""Enrollment, agent side (docs/design/agent-protocol.md §2).

:func:`enroll` fetches the coordinator's CA certificate and checks its SHA-256 fingerprint against the one
the operator gave (or reads a CA file), **before** the token is sent anywhere; then it makes a fresh key and
CSR, posts them with the one-time token over TLS verified against that CA, checks that the returned
certificate is signed by the CA and holds our public key, and stores ``agent.key`` (0600), ``agent.crt`` and
``ca.crt`` in the state directory. The token is never logged and never put on a command line.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import frieze
from frieze.core.errors import AuthError, IntegrityError, UsageError
from frieze.protocol.ca import client_context, fingerprint, key_pem, make_csr, new_key
from frieze.protocol.errors import AgentUnreachable, error_from_body


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def fetch_ca(coordinator: str, expected_fingerprint: str) -> bytes:
    """The coordinator's CA certificate (PEM), only if its SHA-256 fingerprint is ``expected_fingerprint``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # not trusted yet: the fingerprint check below is the trust decision
    try:
        r = httpx.get(coordinator.rstrip("/") + "/v1/agents/ca", verify=ctx, timeout=30)
    except httpx.TransportError as e:
        raise AgentUnreachable(f"coordinator at {coordinator} unreachable ({type(e).__name__})") from e
    if r.status_code != 200:
        raise UsageError(f"coordinator at {coordinator} did not serve its CA certificate (HTTP {r.status_code})")
    pem = r.content
    try:
        got = fingerprint(pem)
    except ValueError as e:
        raise IntegrityError(f"coordinator at {coordinator} served something that is not a certificate") from e
    want = expected_fingerprint.lower().replace(":", "").removeprefix("sha256")
    if got != want:
        raise AuthError(f"the CA certificate served by {coordinator} has fingerprint {got}, not the expected "
                        f"{want}; refusing to enroll (nothing was sent)")
    return pem


def enroll(coordinator: str, token: str, state_dir: Path | str, name: str, *, ca_fingerprint: str | None = None,
           ca_file: Path | str | None = None, sans: list[str] | None = None, address: str | None = None,
           timeout: float = 30.0) -> dict[str, Any]:
    """Enroll this agent; returns ``{"host", "fingerprint", "cert", "key", "ca"}``. Nothing is written to
    the state directory unless a valid certificate came back."""
    token = token.strip()
    if not token:
        raise UsageError("the enrollment token is empty")
    if ca_file is not None:
        ca_pem = Path(ca_file).read_bytes()
        if ca_fingerprint and fingerprint(ca_pem) != ca_fingerprint.lower().replace(":", "").removeprefix("sha256"):
            raise AuthError(f"CA file {ca_file} does not have the expected fingerprint; refusing to enroll")
    elif ca_fingerprint:
        ca_pem = fetch_ca(coordinator, ca_fingerprint)
    else:
        raise UsageError("give the coordinator CA's fingerprint (--ca-fingerprint) or its certificate (--ca-file)")
    key = new_key()
    csr = make_csr(key, name, sans)
    ctx = client_context(None, None, ca_pem)
    body = {"token": token, "csr_pem": csr.decode(), "address": address, "version": frieze.__version__}
    try:
        r = httpx.post(coordinator.rstrip("/") + "/v1/agents/enroll", json=body, verify=ctx, timeout=timeout)
    except httpx.TransportError as e:
        raise AgentUnreachable(f"coordinator at {coordinator} unreachable ({type(e).__name__}: {e})") from e
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"enrollment refused by {coordinator} (HTTP {r.status_code})") from None
        raise error_from_body(err, r.status_code)
    data = r.json()
    cert = x509.load_pem_x509_certificate(data["cert_pem"].encode())
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as e:
        raise IntegrityError("the certificate returned by the coordinator is not signed by its CA") from e
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = cert.public_key()
    if not isinstance(theirs, ec.EllipticCurvePublicKey) or theirs.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != ours:
        raise IntegrityError("the certificate returned by the coordinator is not for this agent's key")
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    _write(d / "agent.key", key_pem(key), 0o600)
    _write(d / "agent.crt", data["cert_pem"].encode(), 0o644)
    _write(d / "ca.crt", ca_pem, 0o644)
    fp = fingerprint(cert)
    _write(d / "enrollment.json", json.dumps({"host": data["host"], "fingerprint": fp,
                                              "coordinator": coordinator}).encode(), 0o644)
    return {"host": data["host"], "fingerprint": fp, "cert": str(d / "agent.crt"), "key": str(d / "agent.key"),
            "ca": str(d / "ca.crt")}
