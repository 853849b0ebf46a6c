"""Every wrong caller is rejected before anything changes (docs/design/agent-protocol.md §1, §9)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from frieze.core.errors import AuthError, Forbidden
from frieze.protocol.ca import (
    ROLE_AGENT,
    ROLE_COORDINATOR,
    CertificateAuthority,
    cert_pem,
    client_context,
    key_pem,
    make_csr,
    new_key,
)
from frieze.protocol.client import AgentClient
from frieze.protocol.errors import AgentUnreachable
from tests.agent.support import Agent


def _self_signed(d: Path) -> dict[str, Path]:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coordinator"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_COORDINATOR)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    (d / "ss.crt").write_bytes(cert_pem(cert))
    (d / "ss.key").write_bytes(key_pem(key))
    return {"cert": d / "ss.crt", "key": d / "ss.key"}


def _expired(ca: CertificateAuthority, d: Path) -> dict[str, Path]:
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    cert = ca.issue(make_csr(key, "coordinator"), "coordinator", role=ROLE_COORDINATOR,
                    not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    d.mkdir(parents=True, exist_ok=True)
    (d / "exp.crt").write_bytes(cert_pem(cert))
    (d / "exp.key").write_bytes(key_pem(key))
    return {"cert": d / "exp.crt", "key": d / "exp.key"}


def _state(agent: Agent) -> dict[str, Any]:
    """What a wrong caller must not have changed: quiesce state, snapshots, epochs."""
    with agent.client() as c:
        st = c.wait(c.status("db1").id).result
        assert st is not None
        exists = c.wait(c.snapshot_exists("v1", "wrong-caller").id).result
        assert exists is not None
    epochs = (agent.state / "epochs.json").read_text() if (agent.state / "epochs.json").exists() else ""
    return {"quiesced": st["quiesced"], "snap": exists["exists"], "epochs": epochs}


def _attempt(c: AgentClient) -> None:
    c.quiesce("db1", epoch=10_000, lease_s=5)


def test_wrong_callers_rejected(agent: Agent, tmp_path: Path) -> None:
    ca_file = agent.pki.coord["ca"]
    other = CertificateAuthority.create(tmp_path / "other-ca")
    other_pair = other.issue_pair("coordinator", ROLE_COORDINATOR, tmp_path / "other")
    ss = _self_signed(tmp_path / "ss")
    exp = _expired(agent.pki.ca, tmp_path / "exp")
    callers: dict[str, Any] = {
        "no_cert": client_context(None, None, ca_file),
        "self_signed": client_context(ss["cert"], ss["key"], ca_file),
        "expired": client_context(exp["cert"], exp["key"], ca_file),
        "other_ca": client_context(other_pair["cert"], other_pair["key"], ca_file),
    }
    before = _state(agent)
    for name, ctx in callers.items():
        rejected = 0
        with AgentClient(agent.url, ctx, timeout=10) as c:
            for attempt in (lambda: _attempt(c), lambda: c.snapshot("v1", snap_id="wrong-caller", epoch=10_000)):
                try:
                    attempt()
                except AgentUnreachable:
                    rejected += 1
        print(f"RESULT mtls-{name} rejected={rejected} attempts=2")
        assert rejected == 2, name
    # plain HTTP on the TLS port: no HTTP answer at all, or an error status; never a task
    try:
        r = httpx.post(f"http://127.0.0.1:{agent.port}/v1/apps/db1/quiesce", json={"epoch": 10_000, "lease_s": 5},
                       timeout=10)
        plain_rejected = int(r.status_code >= 400)
    except httpx.TransportError:
        plain_rejected = 1
    print(f"RESULT mtls-plain-http rejected={plain_rejected} attempts=1")
    assert plain_rejected == 1
    assert _state(agent) == before


def test_agent_cert_forbidden(agent: Agent) -> None:
    """An agent certificate from the right CA passes the handshake but has the wrong role: 403."""
    before = _state(agent)
    ctx = client_context(agent.pki.agent["cert"], agent.pki.agent["key"], agent.pki.agent["ca"])
    with AgentClient(agent.url, ctx) as c:
        with pytest.raises(Forbidden) as ei:
            _attempt(c)
        assert "not a coordinator" in ei.value.message
        with pytest.raises(Forbidden):
            c.version()
    assert _state(agent) == before


def test_coordinator_verifies_agent(agent: Agent, tmp_path: Path) -> None:
    """The coordinator's client refuses an agent whose certificate is not from its CA, or names another host."""
    other = CertificateAuthority.create(tmp_path / "other-ca")
    ctx = client_context(agent.pki.coord["cert"], agent.pki.coord["key"], other.cert_path)
    with AgentClient(agent.url, ctx) as c, pytest.raises(AgentUnreachable):
        c.version()
    with agent.client(expected_cn="h2") as c, pytest.raises(AuthError):
        c.version()
    with agent.client(expected_cn="h1") as c:
        assert c.version().version


def test_right_caller_accepted(agent: Agent) -> None:
    with agent.client() as c:
        v = c.version()
        assert v.protocol == 1


def test_role_is_in_certificates(agent: Agent) -> None:
    cert = x509.load_pem_x509_certificate(agent.pki.agent["cert"].read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == ROLE_AGENT
