"""Bad input gets a clear error before any task exists, and changes nothing (agent-protocol.md §3, §9)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from frieze.core.errors import Conflict, Forbidden, FriezeError, NotFound, NotSupported, UsageError
from frieze.protocol.client import AgentClient
from frieze.protocol.models import FileEntry
from tests.agent.support import Agent


def _fingerprint(agent: Agent) -> dict[str, Any]:
    tmp = agent.config.parent
    snaps = tmp / "data" / ".frieze-snapshots"
    epochs = agent.state / "epochs.json"
    with agent.client() as c:
        st = c.wait(c.status("db1").id).result
    assert st is not None
    return {"snaps": sorted(str(p) for p in snaps.rglob("*")) if snaps.exists() else [],
            "epochs": epochs.read_text() if epochs.exists() else "",
            "quiesced": st["quiesced"],
            "restore": sorted(str(p) for p in (tmp / "restore").rglob("*"))}


CASES: list[tuple[str, type[FriezeError], str, Callable[[AgentClient], Any]]] = [
    ("unknown-app", NotFound, "app 'nope' is not configured", lambda c: c.quiesce("nope", epoch=5000, lease_s=5)),
    ("unknown-app-start", NotFound, "not configured", lambda c: c.start("nope")),
    ("unknown-volume", NotFound, "volume 'nope' is not configured",
     lambda c: c.snapshot("nope", snap_id="x", epoch=5000)),
    ("missing-volume-path", NotFound, "does not exist", lambda c: c.snapshot("gone", snap_id="x", epoch=5000)),
    ("provider-cannot-snapshot-fs", NotSupported, "provider 'btrfs' cannot snapshot volume 'onbtrfs'",
     lambda c: c.snapshot("onbtrfs", snap_id="x", epoch=5000)),
    ("lease-zero", UsageError, "lease_s", lambda c: c.quiesce("db1", epoch=5000, lease_s=0)),
    ("lease-negative", UsageError, "lease_s", lambda c: c.quiesce("db1", epoch=5000, lease_s=-1)),
    ("epoch-zero-quiesce", UsageError, "epoch", lambda c: c.quiesce("db1", epoch=0, lease_s=5)),
    ("bad-snap-id", UsageError, "snap_id", lambda c: c.snapshot("v1", snap_id="../x", epoch=5000)),
    ("two-recovery-targets", UsageError, "exactly one",
     lambda c: c.recover("db1", time="2026-01-01T00:00:00Z", position="0/1")),
    ("recover-not-supported", NotSupported, "does not support", lambda c: c.recover("db1", all_logs=True)),
    ("start-not-supported", NotSupported, "does not support start", lambda c: c.start("db1")),
    ("kind-mismatch", Conflict, "is kind 'sqlite'",
     lambda c: c.quiesce("db1", epoch=5000, lease_s=5, kind="postgres")),
    ("restore-outside-roots", Forbidden, "not inside a configured volume",
     lambda c: c.target_state("/etc")),
    ("restore-relative-target", UsageError, "absolute", lambda c: c.target_state("restore/x")),
    ("read-unknown-snapshot", NotFound, "does not exist", lambda c: c.entries("v1", "never-made")),
    ("delete-unknown-volume", NotFound, "not configured", lambda c: c.delete_snapshot("nope", "x")),
]


@pytest.mark.parametrize(("case", "cls", "text", "call"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_changes_nothing(agent: Agent, case: str, cls: type[FriezeError], text: str,
                                   call: Callable[[AgentClient], Any]) -> None:
    before = _fingerprint(agent)
    with agent.client() as c, pytest.raises(cls) as ei:
        call(c)
    assert text in ei.value.message, ei.value.message
    changed = int(_fingerprint(agent) != before)
    print(f"RESULT bad-input-{case} code={ei.value.code} changed={changed}")
    assert changed == 0


def test_malformed_bodies(agent: Agent) -> None:
    ctx = agent.pki.coordinator_context()
    with httpx.Client(base_url=agent.url, verify=ctx) as h:
        for body in (b"{", b"[]", b'{"epoch": "x", "lease_s": 5}', b'{"epoch": 1, "lease_s": 5, "bogus": 1}'):
            r = h.post("/v1/apps/db1/quiesce", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, (body, r.status_code, r.text)
            assert r.json()["error"]["code"] == "usage"


def test_restore_put_checks(agent: Agent) -> None:
    tmp = agent.config.parent
    target = str(tmp / "restore" / "put")
    with agent.client() as c:
        # unsafe relative paths
        for bad in ("../escape", "/abs", "a/../../b", ".frieze-snapshots/x"):
            with pytest.raises(UsageError):
                c.put_file(target, FileEntry(path=bad, type="file", digest="0" * 64), [b"x"])
        # a wrong digest keeps nothing
        with pytest.raises(FriezeError) as ei:
            c.put_file(target, FileEntry(path="f.bin", type="file", digest="0" * 64), [b"hello"])
        assert ei.value.code == "integrity"
        assert not os.path.exists(os.path.join(target, "f.bin"))
        assert [n for n in os.listdir(target) if n.startswith(".frieze-tmp")] == []
        # an absolute symlink target is refused
        with pytest.raises(UsageError):
            c.put_file(target, FileEntry(path="l", type="symlink", target="/etc/passwd"), None)
        # writes never go through a symlink placed in the target
        os.symlink("/tmp", os.path.join(target, "sneaky"))
        import blake3

        with pytest.raises(Conflict):
            c.put_file(target, FileEntry(path="sneaky/x", type="file", digest=blake3.blake3(b"x").hexdigest()),
                       [b"x"])
        assert not Path("/tmp/x").exists() or Path("/tmp/x").read_bytes() != b"x"
        os.unlink(os.path.join(target, "sneaky"))
