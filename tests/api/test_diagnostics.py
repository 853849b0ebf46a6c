"""A failed operation's diagnostic bundle downloads through the API (GET /v1/operations/{id}/diagnostics) and the
CLI (``frieze op diagnostics``), and holds no secret: a real backup that fails at quiesce (the repository and
app passwords live in the vault and must not leak into the bundle), and an operation whose own arguments carry
secrets (``SecretStr`` and ``secret_fields``: ``<redacted>`` in inputs.json, scrubbed from the logs and error)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, SecretStr
from typer.testing import CliRunner

from frieze.api.app import create_app
from frieze.cli import ops
from frieze.coordinator.service import Coordinator
from frieze.engine import Checkpoint, Engine, TaskContext, Workflow, task
from tests.api.support import serve_in_thread
from tests.coordinator.local_port import LocalPort
from tests.coordinator.support import coordinator

pytestmark = pytest.mark.timeout(180)

REPO_PW = "CANARY-diag-repo-pw-5e7a1c"
APP_PW = "CANARY-diag-app-pw-90d2b4"
ARG_TOKEN = "CANARY-diag-arg-token-3f8e"
ARG_PASSWORD = "CANARY-diag-arg-pw-c41d7a"
CANARIES = (REPO_PW, APP_PW, ARG_TOKEN, ARG_PASSWORD)
MEMBERS = {"status.json", "logs.txt", "inputs.json", "steps.json", "versions.json", "environment.json"}


class LeakyArgs(BaseModel):
    target: str
    token: SecretStr
    password: str


@task
def leaky_connect(ctx: TaskContext[LeakyArgs, BaseModel]) -> None:
    """A careless task: logs and fails with its secrets in the text; the engine must scrub both."""
    ctx.log(f"connecting to {ctx.args.target} with {ctx.args.token.get_secret_value()} / {ctx.args.password}")
    raise RuntimeError(f"login refused for token {ctx.args.token.get_secret_value()} password {ctx.args.password}")


class LeakyWorkflow(Workflow[LeakyArgs, BaseModel]):
    name = "leaky"
    Args = LeakyArgs
    secret_fields = frozenset({"password"})
    forward = [leaky_connect, Checkpoint("done")]


@pytest.fixture
def coord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Coordinator, dict[str, str]]]:
    """A coordinator (engine on, scheduler off) whose engine also runs ``leaky``, with host h1 served by the
    in-process agent stand-in, failing the quiesce of app ``db``; returns it and the admin auth header."""
    from frieze.coordinator import engine_setup

    real = engine_setup.make_engine

    def make_engine(config: Any) -> Engine:
        from frieze.coordinator.workflows.backup import BackupWorkflow
        from frieze.coordinator.workflows.recover import RecoverWorkflow
        from frieze.coordinator.workflows.restore import RestoreWorkflow

        base = real(config)
        base.store.dispose()  # never started; same configuration, one more workflow
        return Engine(base.config, [BackupWorkflow, RestoreWorkflow, RecoverWorkflow, LeakyWorkflow])

    monkeypatch.setattr(engine_setup, "make_engine", make_engine)
    vol = tmp_path / "vol"
    vol.mkdir()
    port = LocalPort("h1", tmp_path / "snaps", fail_quiesce={"db"})
    with coordinator(tmp_path, port) as c:
        c.create_host("h1", "local")
        c.registry.heartbeat("h1", None, "0.1.0")
        c.resources.create_volume("h1", "v1", str(vol), "copy")
        c.create_app("h1", "db", "sqlite", str(vol), "v1", {"db": "app.db"}, {"password": APP_PW})
        c.create_repository("r1", f"file://{tmp_path}/repo", REPO_PW, True, {})
        c.resources.create_protection_set("ps1", ["db"], [])
        token = (tmp_path / "state" / "admin.token").read_text().strip()
        yield c, {"Authorization": f"Bearer {token}"}


@contextmanager
def serve(c: Coordinator) -> Iterator[str]:
    """The coordinator's API on a free loopback port (uvicorn in a thread)."""
    with serve_in_thread(c) as url:
        yield url


def members(bundle: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read().decode()
    return out


def assert_clean(files: dict[str, str], bundle: bytes) -> None:
    """Every member is there and no secret is in any of them (nor in the compressed bytes' plain text)."""
    assert set(files) >= MEMBERS, set(files)
    for name, text in files.items():
        for canary in CANARIES:
            assert canary not in text, (canary, name)
    for canary in CANARIES:
        assert canary.encode() not in bundle


def test_failed_ops_bundles_download_via_api_and_cli(coord: tuple[Coordinator, dict[str, str]],
                                                      tmp_path: Path) -> None:
    c, h = coord
    client = TestClient(create_app(c))
    backup = client.post("/v1/operations/backup", json={"protection_set": "ps1", "repository": "r1"}, headers=h)
    assert backup.status_code == 202, backup.text
    b_id = backup.json()["operation_id"]
    leaky_id = c.engine.submit("leaky", {"target": "db01", "token": ARG_TOKEN, "password": ARG_PASSWORD})
    for op in (b_id, leaky_id):
        st = c.engine.wait(op, timeout=120)
        assert st.state.value == "failed", st
        assert st.has_diagnostics  # made when it failed, not on demand

    bundles: dict[str, bytes] = {}
    for op in (b_id, leaky_id):
        r = client.get(f"/v1/operations/{op}/diagnostics", headers=h)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/gzip"
        assert f'filename="{op}-diagnostics.tar.gz"' in r.headers["content-disposition"]
        bundles[op] = r.content
        files = members(r.content)
        assert_clean(files, r.content)
        assert json.loads(files["status.json"])["state"] == "failed"
    assert client.get(f"/v1/operations/{b_id}/diagnostics").status_code == 401  # needs a token
    assert client.get("/v1/operations/op-nope/diagnostics", headers=h).status_code == 404

    backup_files = members(bundles[b_id])
    assert "quiesce of db timed out" in backup_files["logs.txt"]
    assert json.loads(backup_files["inputs.json"])["protection_set_id"]
    leaky = members(bundles[leaky_id])
    inputs = json.loads(leaky["inputs.json"])
    assert inputs == {"target": "db01", "token": "<redacted>", "password": "<redacted>"}
    assert "connecting to db01 with <redacted> / <redacted>" in leaky["logs.txt"]
    status = json.loads(leaky["status.json"])
    assert "login refused for token <redacted> password <redacted>" in json.dumps(status["error"])

    # the CLI: frieze op diagnostics ID -o FILE, against the API on a port
    tok = tmp_path / "state" / "admin.token"
    runner = CliRunner()
    with serve(c) as url:
        for op in (b_id, leaky_id):
            out = tmp_path / f"{op}.tar.gz"
            res = runner.invoke(ops.app, ["diagnostics", op, "-o", str(out), "--server", url, "--token-file",
                                          str(tok), "--json"])
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout) == {"operation": op, "file": str(out), "bytes": out.stat().st_size}
            data = out.read_bytes()
            assert members(data) == members(bundles[op])  # the same bundle as the API's
            assert_clean(members(data), data)
            for canary in CANARIES:
                assert canary not in res.output
        res = runner.invoke(ops.app, ["diagnostics", "op-nope", "-o", str(tmp_path / "x.tgz"), "--server", url,
                                      "--token-file", str(tok), "--json"])
        assert res.exit_code != 0 and not (tmp_path / "x.tgz").exists()
