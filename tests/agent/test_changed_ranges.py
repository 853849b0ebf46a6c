"""Changed byte ranges carried from the provider through the agent and the protocol into the coordinator's
mover and the repository's backup, on real btrfs and XFS loop devices.

A 64 MiB file is snapshotted (btrfs subvolume snapshot / reflink clone) and ingested by the real
:class:`~frieze.coordinator.mover.Mover` through :class:`~frieze.protocol.remote.RemoteAgent` and the real agent
process, then backed up into a repository. 1 % of it (ten 64 KiB writes) is changed, a second snapshot is
taken and the incremental goes the same way: the agent reports the changed ranges (``GET
.../snapshots/s2/changes?parent=s1``), the mover fetches only those ranges and checks the patched file against
the host's BLAKE3, and the repository's backup (``changed_ranges=`` from the mover, fixed blocks) reads only
the touched blocks. Asserted: bytes moved from the agent and bytes read by the backup are a small fraction of
the file, and the mirror and the restored repository snapshot equal the host's second snapshot bit for bit.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from frieze.core.errors import NotSupported
from frieze.protocol.remote import RemoteAgent
from tests.agent.support import PKI, run_agent
from tests.support.loopfs import LoopFs, loop_fs_or_skip

SIZE = 64 << 20
CHANGE = 64 << 10
NCHANGES = 10  # 640 KiB = 1 % of 64 MiB
BLOCK = 64 << 10


class VolumeRef:
    def __init__(self, vid: str, name: str, path: str, provider: str) -> None:
        self.id, self.name, self.path, self.provider = vid, name, path, provider


@pytest.fixture(params=["btrfs", "xfs"])
def fs(request: pytest.FixtureRequest) -> Iterator[LoopFs]:
    with loop_fs_or_skip(request.param) as f:
        yield f


def _write_random(path: Path, size: int) -> None:
    rnd = random.Random(1)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(rnd.randbytes(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def test_incremental_moves_and_reads_only_the_changed_ranges(tmp_path: Path, pki: PKI, fs: LoopFs) -> None:
    from frieze.coordinator.mover import FileEntry, Mover
    from frieze.repo.backup import backup
    from frieze.repo.blobstore.memory import MemoryBlobStore
    from frieze.repo.chunking import FixedBlocks
    from frieze.repo.repository import Repository
    from frieze.repo.restore import restore
    from frieze.repo.types import KdfParams, RepoParams

    provider = "btrfs" if fs.fstype == "btrfs" else "reflink"
    big = fs.volume / "big.bin"
    _write_random(big, SIZE)
    (fs.volume / "small.txt").write_text("hello\n")
    plain_dir = fs.mount / "plainvol"
    plain_dir.mkdir()
    (plain_dir / "f.txt").write_text("plain\n")
    host = {"volumes": {"v1": {"path": str(fs.volume), "provider": provider},
                        "plain": {"path": str(plain_dir), "provider": "copy"}}}
    vol = VolumeRef("vol-1", "v1", str(fs.volume), provider)
    repo = Repository.init(MemoryBlobStore(), "pw", params=RepoParams(
        cdc_min=16 << 10, cdc_avg=64 << 10, cdc_max=256 << 10, kdf=KdfParams.cheap_for_tests()))
    globs = {"big.bin": FixedBlocks(4096, BLOCK)}
    with run_agent(tmp_path, pki, **host) as a:  # type: ignore[arg-type]
        port = RemoteAgent(a.client(expected_cn="h1", timeout=120), "h1", entry_factory=lambda d: FileEntry(**d))
        try:
            mover = Mover(tmp_path / "staging")
            mirror = mover.mirror_dir(vol.id)
            port.snapshot(vol, snap_id="s1", epoch=0)
            r1 = mover.ingest(vol.id, port.source(vol, "s1"))
            assert r1.bytes_received >= SIZE and r1.changed_ranges is None  # first: everything, whole
            assert mover.mirrored_snapshot(vol.id) == "s1"
            b1 = backup(repo, [str(mirror)], host="frieze:vol-1", fixed_block_globs=globs)
            assert b1.stats.bytes_read >= SIZE

            rnd = random.Random(2)
            offsets = sorted(rnd.sample(range(SIZE // CHANGE), NCHANGES))
            with open(big, "r+b") as f:
                for o in offsets:
                    f.seek(o * CHANGE)
                    f.write(os.urandom(CHANGE))
                f.flush()
                os.fsync(f.fileno())
            port.snapshot(vol, snap_id="s2", epoch=0)

            # the agent's API and the protocol client: per file, the changed ranges or None
            ranges = port.client.changed_ranges("v1", "s2", "s1")
            assert ranges["small.txt"] in ([], [(0, 6)])  # a btrfs inline extent is always "changed"
            big_ranges = ranges["big.bin"]
            assert big_ranges is not None
            reported = sum(n for _a, n in big_ranges)
            for o in offsets:  # a superset of what was written
                assert any(a <= o * CHANGE and o * CHANGE + CHANGE <= a + n for a, n in big_ranges), (o, big_ranges)
            assert reported <= 4 * NCHANGES * CHANGE, reported

            r2 = mover.ingest(vol.id, port.source(vol, "s2"))
            assert r2.ranges_parent == "s1" and r2.changed_ranges is not None and r2.files_patched == 1
            assert r2.changed_ranges["big.bin"] == big_ranges
            assert r2.mirror_parent == "s1" and "big.bin" in r2.changed_paths
            assert "small.txt" not in r2.changed_paths
            b2 = backup(repo, [str(mirror)], host="frieze:vol-1", fixed_block_globs=globs,
                        changed_ranges=r2.changed_ranges, changed_paths=r2.changed_paths)
            assert b2.parent == b1.snapshot_id
            # the mirror is the host's second snapshot, bit for bit
            want = blake3.blake3(big.read_bytes()).hexdigest()
            assert blake3.blake3((mirror / "big.bin").read_bytes()).hexdigest() == want
            out = tmp_path / "restored"
            restore(repo, b2.snapshot_id, out)
            assert blake3.blake3((out / "big.bin").read_bytes()).hexdigest() == want
            assert (out / "small.txt").read_text() == "hello\n"

            moved_frac = r2.bytes_received / SIZE
            read_frac = b2.stats.bytes_read / SIZE
            print(f"RESULT CR1 fs={fs.fstype} provider={provider} file_mib={SIZE >> 20} changed_kib="
                  f"{NCHANGES * CHANGE >> 10} reported_kib={reported >> 10} first_moved={r1.bytes_received} "
                  f"incremental_moved={r2.bytes_received} moved_frac={moved_frac:.4f} "
                  f"incremental_repo_read={b2.stats.bytes_read} read_frac={read_frac:.4f}")
            assert moved_frac < 0.05, r2
            assert read_frac < 0.05, b2.stats

            # a provider without changed ranges says so (typed), and the mover then fetches whole files
            plain = VolumeRef("vol-2", "plain", str(plain_dir), "copy")
            port.snapshot(plain, snap_id="p1", epoch=0)
            port.snapshot(plain, snap_id="p2", epoch=0)
            with pytest.raises(NotSupported):
                port.client.changed_ranges("plain", "p2", "p1")
            assert port.source(plain, "p2").changed_since("p1") is None
        finally:
            for v, sids in (("v1", ("s1", "s2")), ("plain", ("p1", "p2"))):
                for sid in sids:
                    port.client.wait(port.client.delete_snapshot(v, sid).id)
            port.client.close()
