"""fsfreeze through the agent and the guardian on a real XFS loop mount: while the mount is frozen the agent
refuses (at once, without blocking) every call that would write to it; after unquiesce a reflink snapshot
works. A snapshot racing with a files quiesce of the same mount never writes to the frozen mount (the freeze
waits for it). Without a guardian the agent refuses a files freeze. (kill -9 while frozen: test_kill_frozen.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from frieze.core.errors import Conflict, NotSupported
from frieze.host.guardian.client import spawn_guardian
from frieze.protocol.models import FileEntry
from tests.agent.support import PKI, run_agent
from tests.support.loopfs import LoopFs, xfs_fs  # noqa: F401

PLUGINS = {"files": "frieze.host.apps.files:FilesPlugin", "sqlite": "frieze.host.apps.sqlite:SQLitePlugin"}


@pytest.fixture
def guardian_sock(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "guardian.sock")
    proc = spawn_guardian(sock, state_dir=str(tmp_path / "gstate"), plugins=PLUGINS)
    try:
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _host(fs: LoopFs, guardian: str) -> dict[str, object]:
    (fs.volume / "data.bin").write_bytes(os.urandom(64 * 1024))
    (fs.mount / "restore").mkdir(exist_ok=True)
    return {"apps": {"fs1": {"kind": "files", "data_dir": str(fs.mount)}},
            "volumes": {"v1": {"path": str(fs.volume), "provider": "reflink"}},
            "extra": {"guardian_socket": guardian, "restore_roots": [str(fs.mount / "restore")]}}


def test_no_io_on_a_frozen_mount(tmp_path: Path, pki: PKI, xfs_fs: LoopFs, guardian_sock: str) -> None:  # noqa: F811
    with run_agent(tmp_path, pki, **_host(xfs_fs, guardian_sock)) as a, a.client(timeout=10) as c:  # type: ignore[arg-type]
        q = c.wait(c.quiesce("fs1", epoch=1, lease_s=10).id)
        assert q.changed
        try:
            attempts: list[Callable[[], object]] = [
                lambda: c.snapshot("v1", snap_id="s1", epoch=1),
                lambda: c.put_file(str(xfs_fs.mount / "restore" / "x"),
                                   FileEntry(path="f", type="file", digest="0" * 64), [b"x"]),
                lambda: c.restore_tar(str(xfs_fs.mount / "restore" / "y"), [b""]),
            ]
            refusals, refused_ms = 0, []
            for attempt in attempts:
                t0 = time.monotonic()
                try:
                    attempt()
                except Conflict as e:
                    assert "frozen" in e.message, e
                    refusals += 1
                refused_ms.append((time.monotonic() - t0) * 1000)
            assert refusals == len(attempts), f"only {refusals} of {len(attempts)} writes were refused"
            assert max(refused_ms) < 2000, refused_ms  # refused at once, never blocked on the frozen mount
            st = c.wait(c.status("fs1").id).result
            assert st is not None and st["quiesced"] is True
        finally:
            u = c.wait(c.unquiesce("fs1", epoch=1).id)
        assert u.changed and u.result is not None and u.result["lease_held"] is True
        s = c.wait(c.snapshot("v1", snap_id="s1", epoch=1).id)
        assert s.changed
        entries = c.entries("v1", "s1")
        assert [e.path for e in entries if e.type == "file"] == ["data.bin"]
        c.wait(c.delete_snapshot("v1", "s1").id)
        print(f"RESULT F1 frozen_refusals={refusals} attempts={len(attempts)} refused_ms_max={max(refused_ms):.0f} "
              f"frozen_ms={u.result['frozen_ms']:.0f}")



def _fill(vol: Path, n: int) -> None:
    d = vol / "many"
    d.mkdir(exist_ok=True)
    for i in range(n):
        (d / f"f{i:05d}").write_bytes(b"x" * 512)


def test_snapshot_racing_a_files_freeze_never_writes_to_the_frozen_mount(
        tmp_path: Path, pki: PKI, xfs_fs: LoopFs, guardian_sock: str) -> None:  # noqa: F811
    """A reflink snapshot (thousands of files: it takes a while) and a files quiesce of the same mount, sent
    together at random offsets. Either the snapshot is refused (the mount was frozen first) or the freeze
    waits until the snapshot is done; the snapshot never blocks on a freeze that came in the middle (which
    would hold it until the lease ran out)."""
    lease_s = 30.0  # a snapshot blocked by the freeze would take >= 15 s; one that is not takes a few on a loaded box
    host = _host(xfs_fs, guardian_sock)
    _fill(xfs_fs.volume, 4000)
    rnd = random.Random(7)
    waited, refused, snap_s = 0, 0, []
    with run_agent(tmp_path, pki, **host) as a, a.client(timeout=30) as c:  # type: ignore[arg-type]
        for i in range(6):
            epoch, sid = i + 1, f"race{i}"
            offset = rnd.uniform(0.0, 0.4)
            t0 = time.monotonic()
            try:
                st = c.snapshot("v1", snap_id=sid, epoch=epoch)
            except Conflict:
                st = None
            time.sleep(offset)
            q = c.quiesce("fs1", epoch=epoch, lease_s=lease_s)
            try:
                if st is not None:
                    s = c.wait(st.id, timeout=lease_s + 10, raise_on_failure=False)
                    snap_s.append(time.monotonic() - t0)
                    if s.state == "failed":
                        assert s.error is not None and s.error.code == "conflict", s
                        refused += 1
                qd = c.wait(q.id, timeout=lease_s + 10)
                assert qd.changed
                if st is not None and s.state == "done":
                    assert s.finished_at is not None and qd.finished_at is not None
                    assert s.finished_at <= qd.finished_at, (s, qd)  # frozen only after the snapshot ended
                    waited += 1
            finally:
                c.wait(c.unquiesce("fs1", epoch=epoch).id)
            c.wait(c.delete_snapshot("v1", sid).id)
        # and the other order: frozen first, then a snapshot is refused at once
        c.wait(c.quiesce("fs1", epoch=100, lease_s=lease_s).id)
        try:
            t0 = time.monotonic()
            with pytest.raises(Conflict, match="frozen"):
                c.snapshot("v1", snap_id="late", epoch=100)
            late_ms = (time.monotonic() - t0) * 1000
        finally:
            c.wait(c.unquiesce("fs1", epoch=100).id)
    print(f"RESULT F2 race_trials=6 freeze_waited_for_snapshot={waited} snapshot_refused={refused} "
          f"snapshot_s_max={max(snap_s):.2f} refused_after_freeze_ms={late_ms:.0f}")
    assert waited + refused == len(snap_s)
    assert max(snap_s) < lease_s / 2, snap_s  # no snapshot sat blocked on the frozen mount until the lease
    assert waited >= 1


def test_files_freeze_refused_without_a_guardian(tmp_path: Path, pki: PKI, xfs_fs: LoopFs) -> None:  # noqa: F811
    host = _host(xfs_fs, "")
    host["extra"] = {"restore_roots": [str(xfs_fs.mount / "restore")]}
    with (run_agent(tmp_path, pki, **host) as a, a.client(timeout=10) as c,  # type: ignore[arg-type]
          pytest.raises(NotSupported, match="guardian")):
        c.quiesce("fs1", epoch=1, lease_s=5)
    w = subprocess.run(["dd", "if=/dev/zero", f"of={xfs_fs.mount}/after", "bs=4k", "count=1", "conv=fsync",
                        "status=none"], timeout=10)
    assert w.returncode == 0  # nothing was frozen
