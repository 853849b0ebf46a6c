"""Enrollment with a one-time token (agent-protocol.md §2): a coordinator-side enrollment server (the reusable
router of frieze.protocol.enroll over uvicorn TLS) and the agent side (library and CLI)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request

from frieze.agent.enroll import enroll
from frieze.agent.tls import PeerCertH11Protocol, subject_attrs
from frieze.core.errors import AuthError
from frieze.protocol.ca import ROLE_COORDINATOR, CertificateAuthority, client_context, ensure_server_tls
from frieze.protocol.client import AgentClient
from frieze.protocol.enroll import OneTimeTokens, enrollment_router
from frieze.protocol.http import install_errors
from tests.agent.support import REPO, wait_health, write_config
from tests.support.ports import free_port


@dataclass
class Coord:
    url: str
    ca: CertificateAuthority
    tokens: OneTimeTokens
    heartbeats: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coord]:
    import uvicorn

    d = tmp_path_factory.mktemp("coord")
    ca = CertificateAuthority.create(d / "ca")
    tls = ensure_server_tls(d / "ca", hostnames=["127.0.0.1"])
    tokens = OneTimeTokens()
    app = FastAPI()
    install_errors(app)
    app.include_router(enrollment_router(ca, tokens.redeem, tokens.record))
    beats: list[dict[str, str]] = []

    @app.post("/v1/agents/heartbeat")
    def heartbeat(body: dict[str, str], request: Request) -> dict[str, str]:
        tls = request.scope.get("extensions", {}).get("tls") or {}
        attrs = subject_attrs(tls.get("peer_cert") or {})
        if attrs.get("organizationalUnitName") != "agent":
            raise AuthError("agents authenticate with their client certificate only")
        beats.append({"cn": attrs["commonName"], **body})
        return {"ok": "yes"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
                                           http=PeerCertH11Protocol,
                                           ssl_certfile=str(tls["cert"]), ssl_keyfile=str(tls["key"]),
                                           ssl_ca_certs=str(tls["ca"]), ssl_cert_reqs=ssl.CERT_OPTIONAL))
    th = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "enrollment server did not start"
        time.sleep(0.02)
    try:
        yield Coord(f"https://127.0.0.1:{port}", ca, tokens, beats)
    finally:
        server.should_exit = True
        th.join(10)


def test_valid_token_issues_cert_naming_registered_host(coord: Coord, tmp_path: Path) -> None:
    token = coord.tokens.new("h7")
    state = tmp_path / "st"
    out = enroll(coord.url, token, state, "evil-name", ca_fingerprint=coord.ca.fingerprint, sans=["127.0.0.1"])
    assert out["host"] == "h7"
    cert = x509.load_pem_x509_certificate((state / "agent.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "h7"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "agent"
    cert.verify_directly_issued_by(coord.ca.cert)
    assert (state / "agent.key").stat().st_mode & 0o777 == 0o600
    assert (state / "ca.crt").read_bytes() == coord.ca.cert_pem
    assert coord.tokens.issued["h7"] == out["fingerprint"]
    # the token is spent: a second use is refused and writes nothing
    state2 = tmp_path / "st2"
    with pytest.raises(AuthError, match="not valid"):
        enroll(coord.url, token, state2, "h7", ca_fingerprint=coord.ca.fingerprint)
    assert not state2.exists()


def test_invalid_and_expired_tokens(coord: Coord, tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="not valid"):
        enroll(coord.url, "enr_made-up-token-xxxx", tmp_path / "a", "h8", ca_fingerprint=coord.ca.fingerprint)
    expired = coord.tokens.new("h8", ttl_s=-1)
    with pytest.raises(AuthError, match="not valid"):
        enroll(coord.url, expired, tmp_path / "b", "h8", ca_fingerprint=coord.ca.fingerprint)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert "h8" not in coord.tokens.issued


def test_wrong_ca_fingerprint_sends_nothing(coord: Coord, tmp_path: Path) -> None:
    token = coord.tokens.new("h9")
    with pytest.raises(AuthError, match="fingerprint"):
        enroll(coord.url, token, tmp_path / "st", "h9", ca_fingerprint="ab" * 32)
    assert not (tmp_path / "st").exists()
    # the token was never sent, so it still works
    out = enroll(coord.url, token, tmp_path / "st", "h9", ca_fingerprint=coord.ca.fingerprint)
    assert out["host"] == "h9"


def test_cli_reads_token_from_file_never_argv(coord: Coord, tmp_path: Path) -> None:
    token = coord.tokens.new("h10")
    tf = tmp_path / "token"
    tf.write_text(token + "\n")
    os.chmod(tf, 0o600)
    argv = [sys.executable, "-m", "frieze.agent", "enroll", "--coordinator", coord.url, "--token-file", str(tf),
            "--state-dir", str(tmp_path / "st"), "--name", "h10", "--ca-fingerprint", coord.ca.fingerprint]
    assert token not in " ".join(argv)
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '"host": "h10"' in r.stdout and token not in r.stdout + r.stderr
    # stdin, and a used token: exit code of AuthError, message without the token
    r2 = subprocess.run([*argv[:7], "-", *argv[8:]], input=token + "\n", capture_output=True, text=True, cwd=REPO,
                        timeout=60)
    assert r2.returncode == AuthError.exit_code and "not valid" in r2.stderr and token not in r2.stderr


def test_enrolled_agent_serves_and_heartbeats(coord: Coord, tmp_path: Path) -> None:
    """The whole chain: enroll → run the agent with what it received → it heartbeats with its own certificate →
    a coordinator certificate from the same CA can call it, and the agent's certificate names the host."""
    token = coord.tokens.new("h11")
    state = tmp_path / "st"
    enroll(coord.url, token, state, "h11", ca_fingerprint=coord.ca.fingerprint, sans=["127.0.0.1"])
    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", {"name": "h11", "listen": f"127.0.0.1:{port}",
                                                  "state_dir": str(state), "heartbeat_s": 0.2})
    proc = subprocess.Popen([sys.executable, "-m", "frieze.agent", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_health(state, proc)
        deadline = time.monotonic() + 20
        while not any(b["cn"] == "h11" for b in coord.heartbeats):
            assert time.monotonic() < deadline, "no heartbeat arrived"
            time.sleep(0.05)
        beat = next(b for b in coord.heartbeats if b["cn"] == "h11")
        assert beat["address"] == f"127.0.0.1:{port}" and beat["version"]
        pair = coord.ca.issue_pair("coordinator", ROLE_COORDINATOR, tmp_path / "coordcert")
        ctx = client_context(pair["cert"], pair["key"], pair["ca"])
        with AgentClient(f"https://127.0.0.1:{port}", ctx, expected_cn="h11") as c:
            assert c.version().version == beat["version"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
