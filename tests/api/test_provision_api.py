"""Provisioning over the API and the CLI: roles, 202 with the plan, clear 4xx for a bad batch with nothing
changed, enrollment tokens issued afterwards, canary secrets nowhere but sealed in the vault; the CLI reads
secrets from the environment or a file (never argv), applies the file and writes the hosts' tokens 0600."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from frieze.cli import provision
from frieze.core.errors import UsageError
from tests.api.support import api, serve_in_thread
from tests.coordinator.support import coordinator

pytestmark = pytest.mark.timeout(180)

CANARY_PW = "CANARY-api-prov-pw-3e7a"
CANARY_DB = "CANARY-api-prov-db-8b1c"


def _body(tmp: Path) -> dict[str, Any]:
    return {
        "hosts": [{"name": "web1"}],
        "volumes": [{"host": "web1", "name": "data", "path": str(tmp / "vol"), "provider": "copy"}],
        "repositories": [{"name": "vault", "url": f"file://{tmp}/repo", "password": CANARY_PW, "init": True}],
        "apps": [{"host": "web1", "name": "db", "kind": "postgres", "data_dir": str(tmp / "vol" / "pg"),
                  "volume": "data", "options": {"port": 5999}, "secrets": {"password": CANARY_DB}}],
        "protection_sets": [{"name": "web", "apps": ["db"]}],
        "policies": [{"name": "hourly", "protection_set": "web", "repository": "vault", "cron": "0 * * * *"}],
    }


def _wait(client: Any, h: dict[str, str], op_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        st: dict[str, Any] = client.get(f"/v1/operations/{op_id}", headers=h).json()
        if st["state"] in ("complete", "failed", "canceled"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


def test_provision_over_the_api(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "vol").mkdir()
    with api(tmp_path) as (c, client, h):
        bodies: list[str] = []
        # roles: provisioning is for admins
        op = client.post("/v1/tokens", json={"name": "ops", "role": "operator"}, headers=h).json()["secret"]
        r = client.post("/v1/operations/provision", json=_body(tmp_path), headers={"Authorization": f"Bearer {op}"})
        assert r.status_code == 403, r.text
        assert client.post("/v1/operations/provision", json=_body(tmp_path)).status_code == 401
        # a bad batch: a clear 4xx naming the problem, nothing recorded
        bad = _body(tmp_path)
        bad["policies"][0]["cron"] = "every hour"
        r = client.post("/v1/operations/provision", json=bad, headers=h)
        bodies.append(r.text)
        assert r.status_code == 400 and r.json()["code"] == "usage" and "cron" in r.json()["message"], r.text
        bad = _body(tmp_path)
        bad["apps"][0]["volume"] = "nosuchvolume"
        r = client.post("/v1/operations/provision", json=bad, headers=h)
        bodies.append(r.text)
        assert r.status_code == 404 and "nosuchvolume" in r.json()["message"], r.text
        assert client.get("/v1/hosts", headers=h).json() == []
        assert client.get("/v1/operations", headers=h).json() == []
        # plan, then apply
        plan = client.post("/v1/provision/plan", json=_body(tmp_path), headers=h)
        assert plan.status_code == 200 and {p["action"] for p in plan.json()} == {"create"}, plan.text
        r = client.post("/v1/operations/provision", json=_body(tmp_path), headers=h)
        assert r.status_code == 202, r.text
        acc = r.json()
        assert len(acc["plan"]) == 6
        st = _wait(client, h, acc["operation_id"])
        bodies += [json.dumps(st), client.get(f"/v1/operations/{acc['operation_id']}/logs", headers=h).text]
        assert st["state"] == "complete", st
        assert st["type"] == "provision" and st["result"]["counts"]["created"] == 6
        apps = client.get("/v1/apps", headers=h).json()
        assert [(a["name"], a["secrets"]) for a in apps] == [("db", ["password"])]
        bodies.append(json.dumps(apps))
        # the host has no token yet: one is issued on request, once, and enrolls
        r = client.post("/v1/hosts/web1/enrollment-token", json={"ttl_s": 600}, headers=h)
        assert r.status_code == 201, r.text
        token = r.json()["enrollment_token"]
        assert c.registry.redeem(token, "https://web1:7443", "0.1.0")["name"] == "web1"
        assert client.post("/v1/hosts/nohost/enrollment-token", json={}, headers=h).status_code == 404
        # the same batch again is a conflict when it differs from what exists
        changed = _body(tmp_path)
        changed["volumes"][0]["provider"] = "reflink"
        r = client.post("/v1/operations/provision", json=changed, headers=h)
        bodies.append(r.text)
        assert r.status_code == 409 and "provider" in r.json()["message"], r.text
        out, errout = capfd.readouterr()
        everything = "\n".join(bodies) + out + errout + client.get("/metrics", headers=h).text
        for canary in (CANARY_PW, CANARY_DB):
            assert canary not in everything
            for f in (tmp_path / "state").rglob("*"):  # catalog, engine database, key file: sealed only
                if f.is_file():
                    assert canary.encode() not in f.read_bytes(), f


def test_frieze_provision_apply_and_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vol").mkdir()
    body = _body(tmp_path)
    body["repositories"][0]["password"] = {"env": "FRIEZE_TEST_REPO_PW"}
    (tmp_path / "db.pw").write_text(CANARY_DB + "\n")
    body["apps"][0]["secrets"]["password"] = {"file": str(tmp_path / "db.pw")}
    f = tmp_path / "fleet.json"
    f.write_text(json.dumps(body))
    monkeypatch.setenv("FRIEZE_TEST_REPO_PW", CANARY_PW)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    with coordinator(tmp_path) as c, serve_in_thread(c) as url:
        common = ["--server", url, "--token-file", str(tmp_path / "state" / "admin.token")]
        r = CliRunner()
        res = r.invoke(provision.app, ["plan", str(f), *common, "--json"])
        assert res.exit_code == 0, res.output
        assert {p["action"] for p in json.loads(res.stdout)} == {"create"}
        toks = tmp_path / "tokens"
        res = r.invoke(provision.app, ["apply", str(f), "--tokens-dir", str(toks), *common, "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["state"] == "complete" and out["result"]["counts"] == {"created": 6, "unchanged": 0}
        tok_file = toks / "web1.token"
        assert out["enrollment_token_files"] == {"web1": str(tok_file)}
        assert oct(os.stat(tok_file).st_mode & 0o777) == "0o600"
        assert c.registry.redeem(tok_file.read_text().strip(), None, "0.1.0")["name"] == "web1"
        assert CANARY_PW not in res.output and CANARY_DB not in res.output
        app_id = c.resources.get_app("db")["id"]
        assert c.secrets.get(f"app/{app_id}/password").reveal() == CANARY_DB  # from the file, newline removed
        # again: all unchanged, human output
        res = r.invoke(provision.app, ["apply", str(f), *common])
        assert res.exit_code == 0, res.output
        assert "unchanged" in res.output and "enrollment token" not in res.output
        # bad input (through the real entry point, which projects the error tree): clear errors, the usage
        # exit code, nothing changed
        env = {k: v for k, v in os.environ.items() if k != "FRIEZE_TEST_REPO_PW"}
        (tmp_path / "broken.json").write_text("{\"hosts\": [")
        for args, needle in (([str(f)], "FRIEZE_TEST_REPO_PW"),
                             ([str(tmp_path / "broken.json")], "not JSON"),
                             ([str(tmp_path / "missing.json")], "missing.json")):
            p = subprocess.run([sys.executable, "-m", "frieze.cli.main", "provision", "apply", *args, *common],
                               capture_output=True, text=True, timeout=60, env=env)
            assert p.returncode == UsageError.exit_code, (args, p.returncode, p.stderr)
            assert needle in p.stderr + p.stdout, (args, p.stderr)
        assert len(c.resources.list_hosts()) == 1 and len(c.engine.list()) == 2


def test_the_documented_example_file_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/examples/fleet.json (linked from the README) is a valid batch: the CLI's loader resolves its
    secrets and the coordinator plans every item as a creation."""
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "fleet.json"
    raw = json.loads(example.read_text())
    pw_file = tmp_path / "orders.pw"
    pw_file.write_text("s3cret\n")
    raw["apps"][0]["secrets"]["password"] = {"file": str(pw_file)}  # the documented path is the host's own
    f = tmp_path / "fleet.json"
    f.write_text(json.dumps(raw))
    monkeypatch.setenv("FRIEZE_VAULT_PASSWORD", "vault-pw")
    body = provision.load(f)
    with api(tmp_path) as (_c, client, h):
        r = client.post("/v1/provision/plan", json=body, headers=h)
        assert r.status_code == 200, r.text
        assert [(p["kind"], p["action"]) for p in r.json()] == [
            (k, "create") for k in ("hosts", "volumes", "repositories", "apps", "protection_sets", "policies")]
