"""Rotating stored credentials without downtime, through the API: the repository password (key slots of a
real repository, while a backup runs), an app's database password (checked through its agent first) and
S3 keys (a real S3-speaking server with IAM authentication on: the old key is deleted after the rotation
and backups go on with the new one). Canary values never show in logs, bodies, metrics or state files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from frieze.coordinator.agents import AppRef
from tests.api.support import api
from tests.coordinator.local_port import LocalPort
from tests.coordinator.support import CounterApp

pytestmark = pytest.mark.timeout(240)

NEW_REPO_PW = "CANARY-rotated-repo-pw-a81c"
OLD_DB_PW = "CANARY-old-db-pw-5d20"
NEW_DB_PW = "CANARY-new-db-pw-9e44"


class PasswordPort(LocalPort):
    """The stand-in agent, with an app that only answers to its current password (like a database)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.db_password = OLD_DB_PW
        self.seen: list[str] = []

    def app_status(self, app: AppRef) -> dict[str, Any]:
        return {"running": app.secrets.get("password") == self.db_password}

    def quiesce(self, app: AppRef, *, epoch: int, lease_s: float) -> dict[str, Any]:
        self.seen.append(app.secrets.get("password", ""))
        if app.secrets.get("password") != self.db_password:
            from frieze.core.errors import AuthError

            raise AuthError(f"app {app.name}: password authentication failed")
        return super().quiesce(app, epoch=epoch, lease_s=lease_s)


def _provision(client: Any, h: dict[str, str], tmp: Path, url: str, **repo: Any) -> None:
    assert client.post("/v1/hosts", json={"name": "h1", "address": "local"}, headers=h).status_code == 201
    assert client.post("/v1/volumes", json={"host": "h1", "name": "v1", "path": str(tmp / "vol"),
                                            "provider": "copy"}, headers=h).status_code == 201
    r = client.post("/v1/apps", json={"host": "h1", "name": "db", "kind": "sqlite", "data_dir": str(tmp / "vol"),
                                      "volume": "v1", "options": {"db": "app.db"},
                                      "secrets": {"password": OLD_DB_PW}}, headers=h)
    assert r.status_code == 201, r.text
    r = client.post("/v1/repositories", json={"name": "r1", "url": url, "password": "old-repo-pw", "init": True,
                                              **repo}, headers=h)
    assert r.status_code == 201, r.text
    assert client.post("/v1/protection-sets", json={"name": "ps", "apps": ["db"]}, headers=h).status_code == 201


def _backup(c: Any, client: Any, h: dict[str, str]) -> dict[str, Any]:
    op = client.post("/v1/operations/backup", json={"protection_set": "ps", "repository": "r1"}, headers=h).json()
    st = c.engine.wait(op["operation_id"], timeout=120)
    out: dict[str, Any] = client.get(f"/v1/operations/{st.id}", headers=h).json()
    return out


def test_repository_and_database_password_rotation(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from frieze.repo.blobstore.registry import open_store
    from frieze.repo.repository import Repository

    (tmp_path / "vol").mkdir()
    port = PasswordPort("h1", tmp_path / "snaps", slow_snapshot_s=1.5)
    bodies: list[str] = []
    with api(tmp_path) as (c, client, h), CounterApp(tmp_path / "vol" / "app.db"):
        c.agents.set_factory(lambda host: port)
        _provision(client, h, tmp_path, f"file://{tmp_path}/repo")
        c.registry.heartbeat("h1", None, "0.1.0")
        assert _backup(c, client, h)["state"] == "complete"
        # -- repository password, while a backup runs -----------------------------------------------
        op = client.post("/v1/operations/backup", json={"protection_set": "ps", "repository": "r1"},
                         headers=h).json()["operation_id"]
        deadline = time.monotonic() + 60
        while c.engine.status(op).step != "snapshot":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = client.put("/v1/repositories/r1/password", json={"password": NEW_REPO_PW}, headers=h)
        assert r.status_code == 200, r.text
        bodies.append(r.text)
        rot = r.json()["rotation"]
        assert rot["old_slot_removed"] is True and rot["slot"] != rot["retired_slot"]
        st = c.engine.wait(op, timeout=120)
        assert st.state.value == "complete", st.error  # no downtime: the running backup went on
        store = open_store(f"file://{tmp_path}/repo")
        with pytest.raises(Exception, match="wrong password"):
            Repository.open(store, "old-repo-pw")
        with Repository.open(store, NEW_REPO_PW) as repo:
            assert len(repo.list_keys()) == 1 and len(repo.list_snapshots()) == 2
        c.repos.close()  # a coordinator opening it afresh uses the sealed new password
        assert _backup(c, client, h)["state"] == "complete"
        r = client.put("/v1/repositories/r1/password", json={"password": NEW_REPO_PW}, headers=h)
        assert r.status_code == 400 and "is the current one" in r.json()["message"]
        assert client.put("/v1/repositories/nope/password", json={"password": "x"}, headers=h).status_code == 404
        r = client.put("/v1/repositories/r1/s3-keys", json={"access_key_id": "a", "secret_access_key": "b"},
                       headers=h)
        assert r.status_code == 400 and "not on S3" in r.json()["message"]
        # -- database password: the engine's password changes, then the vault's -----------------------
        port.db_password = NEW_DB_PW  # as ALTER USER ... would
        before = client.get("/v1/apps", headers=h).json()
        r = client.put("/v1/apps/db/secrets", json={"secrets": {"password": "CANARY-wrong-db-pw-11"}}, headers=h)
        assert r.status_code == 401 and "not reachable with the new secrets" in r.json()["message"], r.text
        bodies.append(r.text)
        assert c.secrets.get(f"app/{before[0]['id']}/password").reveal() == OLD_DB_PW, "nothing changed"
        r = client.put("/v1/apps/db/secrets", json={"secrets": {"password": NEW_DB_PW}}, headers=h)
        assert r.status_code == 200 and r.json()["secrets"] == ["password"], r.text
        bodies.append(r.text)
        port.seen.clear()
        assert _backup(c, client, h)["state"] == "complete"
        assert port.seen == [NEW_DB_PW], "the next call carries the new password"
        for path in ("/v1/apps", "/v1/repositories", "/metrics"):
            bodies.append(client.get(path, headers=h).text)
        out, err = capfd.readouterr()
        everything = "\n".join(bodies) + out + err + "".join(
            ln.message for o in c.engine.list() for ln in c.engine.logs(o.id))
        for canary in (NEW_REPO_PW, OLD_DB_PW, NEW_DB_PW, "CANARY-wrong-db-pw-11"):
            assert canary not in everything, canary
        for f in (tmp_path / "state").rglob("*"):
            if f.is_file():
                for canary in (NEW_REPO_PW, NEW_DB_PW):
                    assert canary.encode() not in f.read_bytes(), f
    print("RESULT ROTATION repository_password=ok (backup running during rotation completed; 1 key slot left) "
          "db_password=ok (wrong one refused, nothing changed) canaries_found=0")


def _iam_user(endpoint: str) -> tuple[Any, dict[str, str], dict[str, str]]:
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    iam.create_user(UserName="frieze-coordinator")
    iam.put_user_policy(UserName="frieze-coordinator", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}]}))
    keys = []
    for _ in range(2):
        k = iam.create_access_key(UserName="frieze-coordinator")["AccessKey"]
        keys.append({"access_key_id": k["AccessKeyId"], "secret_access_key": k["SecretAccessKey"]})
    return iam, keys[0], keys[1]


def test_s3_keys_rotation_with_iam_authentication(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import boto3
    import httpx
    from moto import settings as moto_settings

    from tests.support.s3 import moto_s3

    (tmp_path / "vol").mkdir()
    port = PasswordPort("h1", tmp_path / "snaps")
    before = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    with moto_s3() as s3:
        bucket = s3.make_bucket()
        _iam, k1, k2 = _iam_user(s3.endpoint)
        httpx.post(f"{s3.endpoint}/moto-api/reset-auth", content=b"0")  # from now on every request is checked
        try:
            with api(tmp_path) as (c, client, h), CounterApp(tmp_path / "vol" / "app.db"):
                c.agents.set_factory(lambda host: port)
                _provision(client, h, tmp_path, s3.url(bucket, "vault"),
                           s3_access_key_id=k1["access_key_id"], s3_secret_access_key=k1["secret_access_key"])
                c.registry.heartbeat("h1", None, "0.1.0")
                assert _backup(c, client, h)["state"] == "complete"
                # keys that do not work are refused and change nothing
                r = client.put("/v1/repositories/r1/s3-keys", json={"access_key_id": k1["access_key_id"],
                                                                   "secret_access_key": "CANARY-bad-s3-7712"},
                               headers=h)
                assert r.status_code in (401, 403, 503), r.text
                bad_body = r.text
                assert _backup(c, client, h)["state"] == "complete"
                r = client.put("/v1/repositories/r1/s3-keys", json={**k2}, headers=h)
                assert r.status_code == 200, r.text
                # revoke the old key at the provider: only the new one works from now on
                boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1",
                             aws_access_key_id=k2["access_key_id"], aws_secret_access_key=k2["secret_access_key"]
                             ).delete_access_key(UserName="frieze-coordinator", AccessKeyId=k1["access_key_id"])
                st = _backup(c, client, h)
                assert st["state"] == "complete", st["error"]
                c.repos.close()  # and a fresh open uses the sealed new keys
                st = _backup(c, client, h)
                assert st["state"] == "complete", st["error"]
                rid = c.resources.get_repository("r1")["id"]
                assert c.secrets.get(f"repo/{rid}/secret_access_key").reveal() == k2["secret_access_key"]
                text = client.get("/metrics").text + client.get("/v1/repositories", headers=h).text + bad_body
                out, err = capfd.readouterr()
                for canary in (k1["secret_access_key"], k2["secret_access_key"], "CANARY-bad-s3-7712"):
                    assert canary not in text + out + err
        finally:
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = before
    print("RESULT ROTATION s3_keys=ok (IAM auth on; old key deleted after rotation; backups go on)")
