"""The CLI over the API: resource commands with --json, operations' exit codes from the error tree,
the token read from a file (never argv)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from frieze.cli import hosts, ops, policies, tokens
from tests.api.support import serve_in_thread
from tests.coordinator.support import coordinator
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with coordinator(tmp_path) as c, serve_in_thread(c) as url:
        yield url, tmp_path / "state" / "admin.token"


def test_resource_commands_json(server: tuple[str, Path]) -> None:
    url, tok = server
    r = CliRunner()
    common = ["--server", url, "--token-file", str(tok), "--json"]
    res = r.invoke(hosts.app, ["add", "h1", *common])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["host"]["name"] == "h1" and out["enrollment_token"].startswith("enr_")
    res = r.invoke(hosts.app, ["list", *common])
    assert [h["name"] for h in json.loads(res.stdout)] == ["h1"]
    res = r.invoke(hosts.app, ["list", "--server", url, "--token-file", str(tok)])
    assert res.exit_code == 0 and "h1" in res.stdout and "pending" in res.stdout  # a rich table
    res = r.invoke(tokens.app, ["create", "ci", "--role", "read-only", *common])
    assert json.loads(res.stdout)["token"]["role"] == "read-only"
    res = r.invoke(policies.app, ["list", *common])
    assert json.loads(res.stdout) == []
    res = r.invoke(ops.app, ["list", *common])
    assert json.loads(res.stdout) == []


def _frieze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frieze.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])


def test_exit_codes_from_error_tree(server: tuple[str, Path], tmp_path: Path) -> None:
    url, tok = server
    common = ["--server", url, "--token-file", str(tok)]
    p = _frieze("op", "status", "op-doesnotexist", *common, "--json")
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)  # NotFound
    assert json.loads(p.stdout)["error"]["code"] == "engine.op_not_found"
    bad = tmp_path / "bad.token"
    bad.write_text("frz_not-a-token\n")
    p = _frieze("op", "list", "--server", url, "--token-file", str(bad))
    assert p.returncode == 5 and "not valid" in p.stderr  # AuthError
    p = _frieze("op", "list", "--server", "http://127.0.0.1:1", "--token-file", str(tok), "--json")
    assert p.returncode == 8 and json.loads(p.stdout)["error"]["retryable"] is True  # unreachable


@pytest.mark.heavy
def test_api_over_https(tmp_path: Path) -> None:
    """``frieze server run --api-tls-cert/--api-tls-key``: the API speaks HTTPS; the CLI verifies it with
    FRIEZE_CA_FILE; plain HTTP is not answered."""
    import os

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "frieze.cli.main", "server", "run", "--state-dir", str(tmp_path / "st"),
                          "--port", str(port), "--agent-port", "0", "--api-tls-cert", str(tmp_path / "c.pem"),
                          "--api-tls-key", str(tmp_path / "k.pem"), "--no-scheduler"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/v1/health", verify=str(tmp_path / "ca.pem"), timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.3)
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
        env = dict(os.environ, FRIEZE_CA_FILE=str(tmp_path / "ca.pem"))
        out = subprocess.run([sys.executable, "-m", "frieze.cli.main", "op", "list", "--server",
                              f"https://127.0.0.1:{port}", "--token-file", str(tmp_path / "st" / "admin.token"),
                              "--json"], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr
    finally:
        p.terminate()
        p.wait(timeout=20)
