"""The coordinator's agent port over the protocol (frieze.protocol.remote.RemoteAgent) against the real agent
process, driven by the coordinator's real Mover: quiesce → snapshot → unquiesce → ingest the snapshot into the
mover's mirror (digest-checked) → send it back to a restore target → the agent's digests match."""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from frieze.core.errors import Conflict
from frieze.protocol.remote import RemoteAgent
from tests.agent.conftest import cleanup_snapshots
from tests.agent.support import Agent


@dataclass(frozen=True)
class AppRef:  # the coordinator's AppRef shape
    id: str
    name: str
    kind: str
    data_dir: str
    options: dict[str, object] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeRef:
    id: str
    name: str
    path: str
    provider: str


def test_mover_round_trip_through_agent(agent: Agent, tmp_path: Path) -> None:
    from frieze.coordinator.mover import FileEntry, Mover

    tmp = agent.config.parent
    vol_path = str(tmp / "data" / "vol")
    app = AppRef("app-1", "db1", "sqlite", vol_path)
    vol = VolumeRef("vol-1", "v1", vol_path, "copy")
    port = RemoteAgent(agent.client(expected_cn="h1"), "h1", entry_factory=lambda d: FileEntry(**d))
    try:
        assert port.version()
        q = port.quiesce(app, epoch=900, lease_s=20)
        assert q["changed"] is True
        s = port.snapshot(vol, snap_id="mv-1", epoch=900)
        assert s["snap_id"] == "mv-1" and port.snapshot_exists(vol, "mv-1")
        u = port.unquiesce(app, epoch=900)
        assert u["changed"] is True and u["lease_held"] is True and u["frozen_ms"] > 0
        assert port.unquiesce(app, epoch=900)["changed"] is False
        mover = Mover(tmp_path / "staging")
        res = mover.ingest(vol.id, port.source(vol, "mv-1"))
        assert res.files >= 1 and res.files_received == res.files
        mirror = mover.mirror_dir(vol.id)
        check = tmp_path / "check"
        shutil.copytree(mirror, check)  # opening the mirror's db would change it (-shm)
        conn = sqlite3.connect(check / "app.db")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        # an unchanged snapshot is not fetched again
        res2 = mover.ingest(vol.id, port.source(vol, "mv-1"))
        assert res2.files_received == 0
        target = str(tmp / "restore" / "mv")
        assert port.target_state(target)["exists"] is False
        files, nbytes = mover.send(mirror, port.sink(target, overwrite=False))
        assert files == res.files and nbytes == res.bytes_total
        have = port.target_digests(target)
        want = {e.path: e.digest for e, _ in mover.extract_entries(mirror) if e.type == "file"}
        assert have == want
        with pytest.raises(Conflict):  # the same files again without overwrite
            mover.send(mirror, port.sink(target, overwrite=False))
        mover.send(mirror, port.sink(target, overwrite=True))
        port.remove_target(target)
        assert port.target_state(target)["exists"] is False
        port.delete_snapshot(vol, "mv-1")
        assert not port.snapshot_exists(vol, "mv-1")
        print(f"RESULT M1 files={files} bytes={nbytes} second_ingest_received={res2.files_received}")
    finally:
        port.client.close()
        cleanup_snapshots(agent)


def test_prepare_before_the_freeze_through_the_agent(agent: Agent) -> None:
    """``prepare_snapshot`` (the copy provider's pre-copy, before the freeze) over the protocol: what is written
    after it is in the snapshot, the pre-copy is used up, a preparation never followed by a snapshot is
    removed by delete_snapshot, and bad input is refused before anything changes."""
    from frieze.core.errors import NotFound, UsageError
    from frieze.host.providers._layout import snapshot_root

    tmp = agent.config.parent
    vol_path = tmp / "data" / "vol"
    vol = VolumeRef("vol-1", "v1", str(vol_path), "copy")
    root = Path(snapshot_root(str(vol_path), "copy"))
    port = RemoteAgent(agent.client(expected_cn="h1"), "h1")
    try:
        p = port.prepare_snapshot(vol, "pp-1")
        assert p["changed"] is True and p["prepared"] is True and p["files"] >= 1, p
        assert (root / ".pre-pp-1").is_dir()
        (vol_path / "after-prepare.txt").write_bytes(b"written after the pre-copy")
        port.snapshot(vol, snap_id="pp-1", epoch=901)
        entries = {e.path: e for e in port.source(vol, "pp-1").entries()}
        assert "after-prepare.txt" in entries
        assert not (root / ".pre-pp-1").exists()
        assert port.prepare_snapshot(vol, "pp-1")["changed"] is False  # the snapshot exists: nothing to do
        port.prepare_snapshot(vol, "pp-2")
        assert (root / ".pre-pp-2").is_dir()
        port.delete_snapshot(vol, "pp-2")  # never taken: its preparation goes
        assert not (root / ".pre-pp-2").exists() and not (root / ".pre-pp-2.json").exists()
        before = sorted(os.listdir(root))
        with pytest.raises(NotFound):
            port.prepare_snapshot(VolumeRef("vol-x", "no-such-volume", "/nowhere", "copy"), "pp-3")
        with pytest.raises(UsageError):
            port.prepare_snapshot(vol, "bad id!")
        assert sorted(os.listdir(root)) == before
        port.delete_snapshot(vol, "pp-1")
    finally:
        (vol_path / "after-prepare.txt").unlink(missing_ok=True)
        port.client.close()
        cleanup_snapshots(agent)


def test_owners_survive_backup_and_restore_through_the_agent(agent: Agent, tmp_path: Path) -> None:
    """Numeric owners travel with the listing into the mover's mirror (so the repository records them) and
    back to the restore target: a PostgreSQL data directory restored to its place is owned as it was."""
    from frieze.coordinator.mover import FileEntry, Mover

    if os.geteuid() != 0:
        pytest.skip("owners can only be given by root")
    tmp = agent.config.parent
    vol_path = tmp / "data" / "vol"
    owned = vol_path / "owned"
    owned.mkdir()
    (owned / "f").write_bytes(b"owned by 4242")
    (owned / "l").symlink_to("f")
    for p in (owned, owned / "f"):
        os.chown(p, 4242, 4343)
    os.lchown(owned / "l", 4244, 4345)
    vol = VolumeRef("vol-1", "v1", str(vol_path), "copy")
    port = RemoteAgent(agent.client(expected_cn="h1"), "h1", entry_factory=lambda d: FileEntry(**d))
    try:
        port.snapshot(vol, snap_id="own-1", epoch=902)
        mover = Mover(tmp_path / "staging")
        mover.ingest(vol.id, port.source(vol, "own-1"))
        mirror = mover.mirror_dir(vol.id)
        for rel, want in (("owned", (4242, 4343)), ("owned/f", (4242, 4343)), ("owned/l", (4244, 4345))):
            st = os.lstat(mirror / rel)
            assert (st.st_uid, st.st_gid) == want, rel
        target = tmp / "restore" / "own"
        mover.send(mirror, port.sink(str(target), overwrite=False))
        for rel, want in (("owned", (4242, 4343)), ("owned/f", (4242, 4343)), ("owned/l", (4244, 4345))):
            st = os.lstat(target / rel)
            assert (st.st_uid, st.st_gid) == want, rel
        assert (target / "owned" / "f").read_bytes() == b"owned by 4242"
        port.remove_target(str(target))
        port.delete_snapshot(vol, "own-1")
    finally:
        shutil.rmtree(owned, ignore_errors=True)
        port.client.close()
        cleanup_snapshots(agent)
