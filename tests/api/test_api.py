"""The REST API: auth and roles, bad input changes nothing, error bodies, canary secrets, OpenAPI."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.api.support import CANARY_DB_PW, CANARY_REPO_PW, api

pytestmark = pytest.mark.timeout(120)


def _prov(client, h, tmp: Path) -> None:
    assert client.post("/v1/hosts", json={"name": "h1"}, headers=h).status_code == 201
    assert client.post("/v1/volumes", json={"host": "h1", "name": "v1", "path": str(tmp / "vol"),
                                            "provider": "copy"}, headers=h).status_code == 201
    r = client.post("/v1/apps", json={"host": "h1", "name": "db", "kind": "sqlite", "data_dir": str(tmp / "vol"),
                                      "volume": "v1", "secrets": {"password": CANARY_DB_PW}}, headers=h)
    assert r.status_code == 201, r.text
    r = client.post("/v1/repositories", json={"name": "r1", "url": f"file://{tmp}/repo", "password": CANARY_REPO_PW,
                                              "init": True}, headers=h)
    assert r.status_code == 201, r.text


def test_every_protected_route_refuses_without_token(tmp_path: Path) -> None:
    with api(tmp_path) as (_c, client, _h):
        spec = client.get("/v1/openapi.json").json()
        assert spec["openapi"].startswith("3.1")
        n = 0
        for path, methods in spec["paths"].items():
            for method in methods:
                if path in ("/v1/health", "/v1/agents/heartbeat"):
                    continue
                url = re.sub(r"\{[^}]+\}", "x", path)
                r = client.request(method.upper(), url, json={})
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.json()["code"] == "auth"
                r = client.request(method.upper(), url, json={}, headers={"Authorization": "Bearer frz_wrong"})
                assert r.status_code == 401
                n += 1
        assert n >= 20
        # the agent port has only enrollment and heartbeat; heartbeat needs a client certificate (a token is
        # not enough), enrollment a valid one-time token
        from fastapi.testclient import TestClient

        from frieze.api.app import create_app

        agent_side = TestClient(create_app(_c, agent_only=True))
        paths = set(agent_side.get("/v1/openapi.json").json()["paths"])
        assert paths == {"/v1/agents/heartbeat", "/v1/agents/enroll", "/v1/agents/ca"}, paths
        r = agent_side.post("/v1/agents/heartbeat", json={"version": "0.1.0"}, headers=_h)
        assert r.status_code == 401
        r = agent_side.post("/v1/agents/enroll", json={"token": "enr_notvalid", "csr_pem": "x" * 80})
        assert r.status_code == 400  # the CSR is checked first, so a bad request burns no token
        assert agent_side.get("/v1/hosts", headers=_h).status_code == 404


def test_roles(tmp_path: Path) -> None:
    with api(tmp_path) as (_c, client, h):
        ro = client.post("/v1/tokens", json={"name": "ro", "role": "read-only"}, headers=h).json()["secret"]
        op = client.post("/v1/tokens", json={"name": "op", "role": "operator"}, headers=h).json()["secret"]
        ro_h = {"Authorization": f"Bearer {ro}"}
        op_h = {"Authorization": f"Bearer {op}"}
        assert client.get("/v1/hosts", headers=ro_h).status_code == 200
        assert client.post("/v1/hosts", json={"name": "x"}, headers=ro_h).status_code == 403
        assert client.post("/v1/hosts", json={"name": "x"}, headers=op_h).status_code == 403
        r = client.post("/v1/operations/backup", json={"protection_set": "none", "repository": "r"}, headers=ro_h)
        assert r.status_code == 403
        r = client.post("/v1/operations/backup", json={"protection_set": "none", "repository": "r"}, headers=op_h)
        assert r.status_code == 404 and "protection set 'none'" in r.json()["message"]
        tokens = client.get("/v1/tokens", headers=h).json()
        assert all("hash" not in str(t) for t in tokens)
        assert client.get("/v1/tokens", headers=op_h).status_code == 403


def test_bad_input_is_clear_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    with api(tmp_path) as (c, client, h):
        _prov(client, h, tmp_path)
        before = {k: client.get(f"/v1/{k}", headers=h).json() for k in ("hosts", "apps", "volumes", "repositories",
                                                                          "protection-sets", "policies")}
        cases = [
            ("/v1/apps", {"host": "nohost", "name": "a", "kind": "sqlite", "data_dir": "/x"}, 404, "host 'nohost'"),
            ("/v1/protection-sets", {"name": "p", "apps": ["noapp"]}, 404, "app 'noapp'"),
            ("/v1/apps", {"host": "h1", "name": "db", "kind": "sqlite", "data_dir": str(tmp_path / "vol")}, 409,
             "app 'db' already exists"),
            ("/v1/repositories", {"name": "r2", "url": f"file://{tmp_path}/repo", "password": "wrong-pw"}, 401,
             "password"),
            ("/v1/repositories", {"name": "r1", "url": f"file://{tmp_path}/other", "password": "x", "init": True},
             409, "repository 'r1' already exists"),
        ]
        assert client.post("/v1/protection-sets", json={"name": "ps", "apps": ["db"]}, headers=h).status_code == 201
        before["protection-sets"] = client.get("/v1/protection-sets", headers=h).json()
        cases += [
            ("/v1/policies", {"name": "p", "protection_set": "ps", "repository": "r1", "cron": "99 * * * *"}, 400,
             "invalid cron expression '99 * * * *'"),
            ("/v1/policies", {"name": "p", "protection_set": "ps", "repository": "r1", "cron": "0 2 * * *",
                              "timezone": "Mars/Olympus"}, 400, "unknown time zone"),
        ]
        for url, body, status, text in cases:
            r = client.post(url, json=body, headers=h)
            assert r.status_code == status, (url, r.status_code, r.text)
            j = r.json()
            assert set(j) >= {"code", "message", "retryable"}
            assert text in j["message"], j
            assert CANARY_REPO_PW not in r.text and CANARY_DB_PW not in r.text
        after = {k: client.get(f"/v1/{k}", headers=h).json() for k in before}
        assert after == before
        assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
        # operations on unknown things
        r = client.post("/v1/operations/restore", json={"restore_point": "rp-nope"}, headers=h)
        assert r.status_code == 404 and "restore point 'rp-nope'" in r.json()["message"]
        r = client.get("/v1/operations/op-nope", headers=h)
        assert r.status_code == 404
        r = client.post("/v1/operations/op-nope/cancel", headers=h)
        assert r.status_code == 404
        assert c.engine.list() == []


def test_canary_secrets_stay_put(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "vol").mkdir()
    with api(tmp_path) as (c, client, h):
        _prov(client, h, tmp_path)
        bodies = []
        for path in ("/v1/apps", "/v1/repositories", "/v1/hosts", "/metrics", "/v1/openapi.json"):
            bodies.append(client.get(path, headers=h).text)
        r = client.post("/v1/repositories", json={"name": "r9", "url": f"file://{tmp_path}/repo",
                                                  "password": "CANARY-wrong-pw-91"}, headers=h)
        bodies.append(r.text)
        r = client.post("/v1/apps", json={"host": "h1", "name": "x", "kind": "sqlite", "data_dir": "relative",
                                          "secrets": {"password": "CANARY-invalid-app-pw"}}, headers=h)
        assert r.status_code == 422
        bodies.append(r.text)
        assert c.secrets.get(f"app/{c.resources.list_apps()[0]['id']}/password").reveal() == CANARY_DB_PW
        out, errout = capfd.readouterr()
        everything = "\n".join(bodies) + out + errout
        for canary in (CANARY_REPO_PW, CANARY_DB_PW, "CANARY-wrong-pw-91", "CANARY-invalid-app-pw"):
            assert canary not in everything
        # at rest: neither the catalog nor the key file holds a canary in plain text
        for f in (tmp_path / "state").rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                for canary in (CANARY_REPO_PW, CANARY_DB_PW):
                    assert canary.encode() not in data, f
        assert oct(os.stat(tmp_path / "state" / "master.key").st_mode & 0o777) == "0o600"
        assert oct(os.stat(tmp_path / "state" / "admin.token").st_mode & 0o777) == "0o600"
        # rotation: new key, same secrets, old key gone
        rot = client.post("/v1/vault/rotate", headers=h).json()
        assert rot["reencrypted"] >= 2 and rot["retired"] == ["k1"]
        assert c.secrets.get(f"app/{c.resources.list_apps()[0]['id']}/password").reveal() == CANARY_DB_PW


def test_repository_paths_relative_or_outside_roots_are_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative repository location would resolve against the server's working directory: refused with
    a clear error and nothing created there; with repository roots, a path outside them is refused too."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    outside = tmp_path / "outside"
    with api(tmp_path, repository_roots=[tmp_path / "repos"]) as (_c, client, h):
        for url in ("repo", "relative/path", "file:relative", "file://relative/x", "./x", "file:./x", "~/x"):
            r = client.post("/v1/repositories", json={"name": "r", "url": url, "password": "pw", "init": True},
                            headers=h)
            assert r.status_code == 400, (url, r.status_code, r.text)
            assert r.json()["code"] == "usage", r.text
            assert "absolute" in r.json()["message"] or "local path" in r.json()["message"], r.text
        for url in (str(outside), f"file://{outside}", f"file://{tmp_path}/repos/../outside", "/etc/frieze-x"):
            r = client.post("/v1/repositories", json={"name": "r", "url": url, "password": "pw", "init": True},
                            headers=h)
            assert r.status_code == 403 and "outside the coordinator's repository roots" in r.json()["message"], r.text
        r = client.post("/v1/repositories", json={"name": "ok", "url": f"file://{tmp_path}/repos/one",
                                                  "password": "pw", "init": True}, headers=h)
        assert r.status_code == 201, r.text
        assert [x["name"] for x in client.get("/v1/repositories", headers=h).json()] == ["ok"]
    assert list(cwd.iterdir()) == [] and not outside.exists() and not Path("/etc/frieze-x").exists()
