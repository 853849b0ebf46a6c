"""Declarative provisioning as an operation (coordinator.provision, workflows/provision.py): a whole batch is
validated before anything changes, applied one kind per step by the real engine, re-applied as "unchanged",
undone as a whole when a step fails; secrets go to the vault and never into the operation's arguments, logs
or result. What it provisions is then backed up through the coordinator."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from frieze.coordinator.catalog.models import App, Host, Policy, ProtectionSet, Repository, SecretRecord, Volume
from frieze.coordinator.service import Coordinator
from frieze.core.errors import AlreadyExists, Conflict, FriezeError, NotFound, UsageError
from tests.coordinator.local_port import LocalPort
from tests.coordinator.support import CounterApp, coordinator

pytestmark = pytest.mark.timeout(180)

CANARY_REPO = "CANARY-prov-repo-pw-51e0"
CANARY_APP = "CANARY-prov-app-pw-9c2d"


def _batch(tmp: Path) -> dict[str, Any]:
    return {
        "hosts": [{"name": "h1", "address": "local", "max_concurrent": 3}, {"name": "h2", "address": None}],
        "volumes": [{"host": "h1", "name": "v1", "path": str(tmp / "vol"), "provider": "copy"}],
        "repositories": [{"name": "r1", "url": f"file://{tmp}/repo", "password": CANARY_REPO, "init": True}],
        "apps": [{"host": "h1", "name": "counter", "kind": "sqlite", "data_dir": str(tmp / "vol"), "volume": "v1",
                  "options": {"db": "app.db"}, "secrets": {"password": CANARY_APP}}],
        "protection_sets": [{"name": "ps1", "apps": ["counter"]}],
        "policies": [{"name": "nightly", "protection_set": "ps1", "repository": "r1", "cron": "30 2 * * *",
                      "timezone": "Europe/Berlin", "retention": {"keep_last": 3}}],
    }


def _catalog(c: Coordinator) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the provisioning may touch, and the names of every sealed secret (a before/after picture)."""
    with c.catalog.session() as s:
        return {
            "hosts": sorted((h.id, h.name, h.address, h.max_concurrent) for h in s.scalars(select(Host))),
            "volumes": sorted((v.id, v.name, v.path) for v in s.scalars(select(Volume))),
            "repositories": sorted((r.id, r.name, r.url) for r in s.scalars(select(Repository))),
            "apps": sorted((a.id, a.name) for a in s.scalars(select(App))),
            "psets": sorted((p.id, p.name) for p in s.scalars(select(ProtectionSet))),
            "policies": sorted((p.id, p.name) for p in s.scalars(select(Policy))),
            "secrets": sorted((r.name,) for r in s.scalars(select(SecretRecord))),
        }


def _engine_text(c: Coordinator, op_id: str) -> str:
    """Everything the engine keeps of an operation: arguments, variables, logs, status, result."""
    import json

    import sqlalchemy as sa

    from frieze.engine.store import logs, ops

    with c.engine.store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(ops).where(ops.c.id == op_id))]
        lines = [r.message for r in conn.execute(sa.select(logs.c.message).where(logs.c.op_id == op_id))]
    return json.dumps(rows, default=str) + "\n".join(lines) + json.dumps(c.operation_status(op_id), default=str)


def test_provision_creates_the_batch_reapply_is_unchanged_and_it_backs_up(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    port = LocalPort("h1", tmp_path / "snaps")
    with coordinator(tmp_path, port) as c, CounterApp(tmp_path / "vol" / "app.db"):
        plan = c.plan_provision(_batch(tmp_path))
        assert [(p["kind"], p["name"], p["action"]) for p in plan] == [
            ("hosts", "h1", "create"), ("hosts", "h2", "create"), ("volumes", "v1", "create"),
            ("repositories", "r1", "create"), ("apps", "counter", "create"), ("protection_sets", "ps1", "create"),
            ("policies", "nightly", "create")]
        assert _catalog(c)["hosts"] == []  # a plan changes nothing

        acc = c.submit_provision(_batch(tmp_path))
        st = c.engine.wait(acc["operation_id"], timeout=120)
        assert st.state.value == "complete", (st.error, st.undo_errors)
        res = c.operation_status(acc["operation_id"])["result"]
        assert res["counts"] == {"created": 7, "unchanged": 0}
        ids = {(p["kind"], p["name"]): p["id"] for p in acc["plan"]}
        assert {h["name"]: h["id"] for h in res["created"]["hosts"]} == {"h1": ids["hosts", "h1"],
                                                                          "h2": ids["hosts", "h2"]}
        # the rows are what the batch said, references resolved inside the batch
        assert c.resources.get_host("h1")["max_concurrent"] == 3
        app = c.resources.get_app("counter")
        assert app["volume_id"] == ids["volumes", "v1"] and app["secrets"] == ["password"]
        pol = c.resources.get_policy("nightly")
        assert pol["protection_set_id"] == ids["protection_sets", "ps1"]
        assert pol["repository_id"] == ids["repositories", "r1"] and pol["timezone"] == "Europe/Berlin"
        assert (tmp_path / "repo" / "config").exists()  # the repository was created
        # secrets: in the vault under their final names, the pending copies gone, never in the engine
        rid, aid = ids["repositories", "r1"], ids["apps", "counter"]
        assert c.secrets.get(f"repo/{rid}/password").reveal() == CANARY_REPO
        assert c.secrets.get(f"app/{aid}/password").reveal() == CANARY_APP
        assert not [n for (n,) in _catalog(c)["secrets"] if n.startswith("pending/")]
        text = _engine_text(c, acc["operation_id"])
        assert CANARY_REPO not in text and CANARY_APP not in text

        # re-applying the same file changes nothing and says so
        before = _catalog(c)
        again = c.submit_provision(_batch(tmp_path))
        assert {p["action"] for p in again["plan"]} == {"unchanged"}
        st2 = c.engine.wait(again["operation_id"], timeout=60)
        assert st2.state.value == "complete", st2.error
        assert c.operation_status(again["operation_id"])["result"]["counts"] == {"created": 0, "unchanged": 7}
        assert _catalog(c) == before

        # what was provisioned works: a backup through the policy
        c.registry.heartbeat("h1", None, "0.1.0")
        b = c.submit_backup("ps1", "nightly", None, None)
        st3 = c.engine.wait(b["operation_id"], timeout=120)
        assert st3.state.value == "complete", (st3.error, st3.undo_errors)
        rp = c.resources.get_restore_point(c.operation_status(b["operation_id"])["result"]["restore_point_id"])
        assert rp["consistency"] == "application-consistent" and rp["repository_id"] == rid


def _bad(tmp: Path, edit: Any) -> dict[str, Any]:
    b = copy.deepcopy(_batch(tmp))
    edit(b)
    return b


def _bad_cases(tmp: Path) -> list[tuple[str, Any, type[FriezeError], str]]:
    return [
        ("invalid cron", lambda b: b["policies"][0].update(cron="61 * * * *"), UsageError, "cron"),
        ("unknown time zone", lambda b: b["policies"][0].update(timezone="Mars/Olympus"), UsageError, "Mars/Olympus"),
        ("unknown host", lambda b: b["volumes"][0].update(host="nohost"), NotFound, "nohost"),
        ("unknown repository", lambda b: b["policies"][0].update(repository="nope"), NotFound, "nope"),
        ("duplicate host", lambda b: b["hosts"].append({"name": "h1", "address": "local"}), UsageError, "twice"),
        ("data dir outside its volume", lambda b: b["apps"][0].update(data_dir="/elsewhere"), UsageError, "not inside"),
        ("app without volume in a set", lambda b: b["apps"][0].update(volume=None), UsageError, "has no volume"),
        ("relative volume path", lambda b: b["volumes"][0].update(path="rel/dir"), UsageError, "absolute"),
        ("unknown provider", lambda b: b["volumes"][0].update(provider="zfs"), UsageError, "zfs"),
        ("relative repository URL", lambda b: b["repositories"][0].update(url="repo"), UsageError, "repository URL"),
        ("empty password", lambda b: b["repositories"][0].update(password=""), UsageError, "password"),
        ("bad retention", lambda b: b["policies"][0].update(retention={"keep_forever": 1}), UsageError, "keep_forever"),
        ("existing host, other address", lambda b: b["hosts"].append({"name": "old", "address": "elsewhere"}),
         Conflict, "address"),
        ("existing repository, other password", lambda b: b["repositories"].append(
            {"name": "old-repo", "url": f"file://{tmp}/old-repo", "password": "not-the-one"}), Conflict, "password"),
        ("existing repository, other URL", lambda b: b["repositories"].append(
            {"name": "old-repo", "url": f"file://{tmp}/moved", "password": "old-pw"}), Conflict, "url"),
        ("unknown kind", lambda b: b.update(widgets=[{}]), UsageError, "widgets"),
        ("empty batch", lambda b: b.clear(), UsageError, "empty"),
    ]


def test_a_bad_batch_is_refused_whole_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    with coordinator(tmp_path) as c:
        c.create_host("old", "here")
        c.create_repository("old-repo", f"file://{tmp_path}/old-repo", "old-pw", True, {})
        before, n_ops = _catalog(c), len(c.engine.list())
        for what, edit, exc, needle in _bad_cases(tmp_path):
            batch = _bad(tmp_path, edit)
            with pytest.raises(exc) as ei:
                c.submit_provision(batch)
            assert needle in str(ei.value), (what, str(ei.value))
            assert _catalog(c) == before, what
            assert len(c.engine.list()) == n_ops, what
        assert not (tmp_path / "repo").exists()
        # an existing item that matches is fine (unchanged), with its secret compared against the vault
        same = _batch(tmp_path)
        same["repositories"].append({"name": "old-repo", "url": f"file://{tmp_path}/old-repo", "password": "old-pw"})
        same["hosts"].append({"name": "old", "address": "here"})
        acts = {(p["kind"], p["name"]): p["action"] for p in c.plan_provision(same)}
        assert acts["repositories", "old-repo"] == "unchanged" and acts["hosts", "old"] == "unchanged"
        assert acts["hosts", "h1"] == "create"


def test_a_failed_step_undoes_what_the_batch_created_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    (tmp_path / "not-a-repo").mkdir()
    with coordinator(tmp_path) as c:
        old, _tok = c.create_host("old", "here")
        before = _catalog(c)
        batch = _batch(tmp_path)
        batch["hosts"].append({"name": "old", "address": "here"})  # exists: unchanged, must survive the undo
        batch["volumes"].append({"host": "old", "name": "v-old", "path": str(tmp_path / "vol"), "provider": "copy"})
        # valid on paper, fails when the step runs: there is no repository to open there
        batch["repositories"][0].update(url=f"file://{tmp_path}/not-a-repo", init=False)
        acc = c.submit_provision(batch)
        st = c.engine.wait(acc["operation_id"], timeout=120)
        assert st.state.value == "failed", st
        assert st.error is not None and st.error["code"] == "not_found", st.error
        assert not st.undo_errors, st.undo_errors
        assert _catalog(c) == before  # hosts and volumes of the batch removed, the old host kept, no secret left
        assert c.resources.get_host("old")["id"] == old["id"]
        logs = "\n".join(x["message"] for x in c.operation_logs(acc["operation_id"], 0))
        assert "host h1" in logs and "removed" in logs
        with pytest.raises(NotFound):
            c.resources.get_host("h1")


def test_rows_never_doubled_when_a_step_runs_again(tmp_path: Path) -> None:
    """Tasks run at least once: a create step that runs again (after a crash) finds its rows by their planned
    ids and creates nothing twice; the repository step opens the repository its first run created."""
    (tmp_path / "vol").mkdir()
    with coordinator(tmp_path) as c:
        plan = c.provisioner.plan(_batch(tmp_path))
        c.provisioner.seal("prov-test", plan)
        items = [it.args() for it in plan]
        first = [c.provisioner.create(it) for it in items]
        again = [c.provisioner.create(it) for it in items]
        assert all(first) and not any(again)
        assert len(_catalog(c)["hosts"]) == 2 and len(_catalog(c)["repositories"]) == 1
        # the repository row lost (as if the crash came between the init and the row): the re-run opens it
        repo_item = next(it for it in items if it["kind"] == "repositories")
        pol_item = next(it for it in items if it["kind"] == "policies")
        with pytest.raises(Exception, match="FOREIGN KEY"):  # still referenced by the policy: refused, kept
            c.provisioner.delete(repo_item)
        assert c.provisioner.delete(pol_item) and c.provisioner.delete(repo_item)
        assert c.provisioner.create(repo_item) is True and c.provisioner.create(pol_item) is True
        with c.repos.open(repo_item["id"]) as r:
            assert r.list_snapshots() == []
        with pytest.raises(AlreadyExists):  # a different batch cannot take the name meanwhile
            c.resources.create_host("h1", None, None)
        assert c.provisioner.drop_pending(items) == 2
        assert not [n for (n,) in _catalog(c)["secrets"] if n.startswith("pending/")]


def test_pending_secrets_of_a_provision_canceled_while_queued_are_swept(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    with coordinator(tmp_path) as c:
        c.engine.shutdown()  # nothing runs: the operation stays queued
        c.engine = None
        from frieze.coordinator.engine_setup import make_engine

        eng = make_engine(c.config)  # an engine that records but does not run (not started)
        eng.store.create()
        c.engine = eng
        acc = c.submit_provision(_batch(tmp_path))
        pending = [n for (n,) in _catalog(c)["secrets"] if n.startswith("pending/")]
        assert len(pending) == 2
        eng.cancel(acc["operation_id"])
        assert eng.status(acc["operation_id"]).state.value == "canceled"
        assert c.provisioner.sweep_pending(set()) == 0  # too recent: could be a batch being submitted
        assert c.provisioner.sweep_pending({pending[0].split("/")[1]}, older_than_s=0) == 0  # active: kept
        assert c.provisioner.sweep_pending(set(), older_than_s=0) == 2
        assert not [n for (n,) in _catalog(c)["secrets"] if n.startswith("pending/")]
        c.engine = None
