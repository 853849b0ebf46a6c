"""Units of the coordinator's logic: cron in time zones across DST, exactly-once schedule ticks with two
schedulers on one catalog, the vault (tamper, move, rotation), the mover's path checks and digest check."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import blake3
import pytest

from frieze.coordinator.catalog.db import Catalog
from frieze.coordinator.mover import FileEntry, Mover, check_rel
from frieze.coordinator.policies import check_cron, next_runs, parse_duration, retention_policy
from frieze.coordinator.scheduler import due_ticks
from frieze.coordinator.vault import Vault
from frieze.core.errors import IntegrityError, UsageError


def test_cron_dst_spring_forward_and_fall_back() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29: the run happens once, at the first valid instant
    runs = next_runs("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC), 3)
    assert [r.isoformat() for r in runs] == ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00",
                                              "2026-03-31T00:30:00+00:00"]
    # 02:30 happens twice in Berlin on 2026-10-25: one run only
    runs = next_runs("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    assert len({r.date() for r in runs}) == 2
    ticks = due_ticks("*/15 * * * *", "America/New_York", datetime(2026, 11, 1, 5, 0, tzinfo=UTC),
                      datetime(2026, 11, 1, 7, 0, tzinfo=UTC))
    assert len(ticks) == len(set(ticks)) == 8  # 05:15..07:00 UTC every 15 min, across the fall-back hour


@pytest.mark.parametrize("bad", ["61 * * * *", "* * *", "", "every day", "0 0 31 2 * *"])
def test_invalid_cron(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid cron"):
        check_cron(bad)


def test_retention_rules() -> None:
    assert retention_policy({}) is None
    p = retention_policy({"keep_last": 3, "keep_within": "2d"})
    assert p is not None and p.last == 3 and p.within is not None and p.within.days == 2
    with pytest.raises(UsageError):
        retention_policy({"keep_forever": 1})
    with pytest.raises(UsageError):
        parse_duration("7 days")


def test_schedule_tick_claimed_exactly_once(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError as SAIntegrityError

    from frieze.coordinator.catalog.models import ScheduleRun

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    cats = [Catalog(url), Catalog(url)]
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        try:
            with cats[i % 2].session() as s:
                s.add(ScheduleRun(policy_id="pol-1", tick="2026-11-22T02:00:00Z", claimed_by=f"c{i}"))
            wins.append(i)
        except SAIntegrityError:
            pass

    ts = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(wins) == 1
    for c in cats:
        c.close()


def test_vault_tamper_move_rotate(tmp_path: Path) -> None:
    v = Vault(tmp_path / "k")
    assert oct(os.stat(tmp_path / "k").st_mode & 0o777) == "0o600"
    s = v.encrypt("repo/1/password", "hunter2")
    assert b"hunter2" not in s.ciphertext
    assert v.decrypt("repo/1/password", s).reveal() == "hunter2"
    opened = v.decrypt("repo/1/password", s)
    assert "hunter2" not in repr(opened) and "hunter2" not in f"{opened}" and "hunter2" not in str(opened)
    with pytest.raises(IntegrityError):
        v.decrypt("repo/2/password", s)  # moved to another name
    bad = type(s)(s.key_id, s.nonce, bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:])
    with pytest.raises(IntegrityError):
        v.decrypt("repo/1/password", bad)
    k2 = v.rotate()
    assert v.decrypt("repo/1/password", s).reveal() == "hunter2"  # the old key still decrypts
    s2 = v.reencrypt("repo/1/password", s)
    assert s2.key_id == k2
    v.retire(s.key_id, in_use={k2})
    assert Vault(tmp_path / "k").decrypt("repo/1/password", s2).reveal() == "hunter2"
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(UsageError, match="readable by others"):
        Vault(tmp_path / "k")


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a//b", "", "a\x00b", ".", "a/./b"])
def test_mover_refuses_unsafe_paths(path: str) -> None:
    with pytest.raises(IntegrityError):
        check_rel(path)


class _Src:
    def __init__(self, files: dict[str, bytes], lie: str | None = None) -> None:
        self.files, self.lie = files, lie
        self.reads: list[str] = []

    def entries(self) -> list[FileEntry]:
        out = [FileEntry("d", "dir", mode=0o755, mtime_ns=1)]
        for p, data in self.files.items():
            digest = blake3.blake3(b"other" if p == self.lie else data).hexdigest()
            out.append(FileEntry(p, "file", len(data), 0o644, 10**18, digest))
        return out

    def read(self, path: str) -> list[bytes]:
        self.reads.append(path)
        return [self.files[path]]


def test_mover_fetches_only_changes_and_checks_digests(tmp_path: Path) -> None:
    m = Mover(tmp_path / "staging")
    files = {"d/a": b"a" * 1000, "d/b": b"b" * 10, "c": b"c"}
    src = _Src(files)
    r = m.ingest("vol-1", src)
    assert r.files_received == 3 and r.bytes_received == 1011
    files2 = dict(files)
    files2["d/b"] = b"B" * 11
    del files2["c"]
    src2 = _Src(files2)
    r2 = m.ingest("vol-1", src2)
    assert src2.reads == ["d/b"] and r2.bytes_received == 11
    root = m.mirror_dir("vol-1")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["d", "d/a", "d/b"]
    before = (root / "d" / "a").read_bytes()
    files3 = dict(files2)
    files3["d/a"] = b"z" * 1000
    with pytest.raises(IntegrityError, match="does not match the digest"):
        m.ingest("vol-1", _Src(files3, lie="d/a"))
    assert (root / "d" / "a").read_bytes() == before  # nothing stored from the bad transfer
    assert not list(root.rglob(".frieze-in-*"))


class _TreeSrc:
    """A host snapshot given as entries and file contents, with a snapshot id (so the mirror knows what it holds)."""

    def __init__(self, snap_id: str, files: dict[str, bytes], dirs: dict[str, int],
                 links: dict[str, str] | None = None, modes: dict[str, int] | None = None) -> None:
        self.snap_id, self.files, self.dirs, self.links, self.modes = snap_id, files, dirs, links or {}, modes or {}

    def entries(self) -> list[FileEntry]:
        out = [FileEntry(d, "dir", mode=0o755, mtime_ns=mt) for d, mt in self.dirs.items()]
        out += [FileEntry(p, "file", len(b), self.modes.get(p, 0o644), 10**18 + len(b), blake3.blake3(b).hexdigest())
                for p, b in self.files.items()]
        out += [FileEntry(p, "symlink", target=t) for p, t in self.links.items()]
        return out

    def read(self, path: str) -> list[bytes]:
        return [self.files[path]]


def test_the_mover_reports_exactly_what_it_changed_and_leaves_the_rest_untouched(tmp_path: Path) -> None:
    """Each ingest lists the mirror paths it removed, created or changed; an unchanged entry's metadata is not set
    again (its ctime stays, so the repository's metadata rule sees it unchanged); and a backup given that list,
    with the previous snapshot of the mirror as parent, is the full walk's snapshot and reads only those files."""
    from frieze.repo.backup import backup
    from frieze.repo.restore import restore
    from tests.repo.test_data_support import make_repo, same_but_atime, tree_listing

    m = Mover(tmp_path / "staging")
    files = {f"d{i}/f{j}": bytes([i, j]) * 100 for i in range(5) for j in range(10)}
    dirs = {f"d{i}": 10**18 + i for i in range(5)}
    r1 = m.ingest("v", _TreeSrc("s1", files, dirs, links={"d0/l": "f1"}))
    assert r1.mirror_parent is None and len(r1.changed_paths) == 56
    root = m.mirror_dir("v")
    repo = make_repo()
    b1 = backup(repo, [root], host="h")
    ctimes = {p: os.lstat(p).st_ctime_ns for p in root.rglob("*")}
    r2 = m.ingest("v", _TreeSrc("s2", files, dirs, links={"d0/l": "f1"}))
    assert r2.mirror_parent == "s1" and r2.changed_paths == []
    assert {p: os.lstat(p).st_ctime_ns for p in root.rglob("*")} == ctimes
    b2 = backup(repo, [root], host="h", parent=b1.snapshot_id, changed_paths=r2.changed_paths)
    assert b2.tree == b1.tree and b2.stats.files_read == 0 and b2.stats.subtrees_kept == 5
    full2 = backup(repo, [root], host="h", parent=b1.snapshot_id)
    assert full2.stats.files_read == 0  # the metadata rule alone: nothing re-read either
    files3 = dict(files)
    files3["d1/f2"] = b"changed"
    del files3["d2/f0"]
    files3["d3/new"] = b"new"
    dirs3 = {**dirs, "d4/sub": 5}
    r3 = m.ingest("v", _TreeSrc("s3", files3, dirs3, links={"d0/l": "f2"}, modes={"d4/f1": 0o600}))
    assert r3.mirror_parent == "s2"
    # a directory whose entry was replaced (a fetched file is renamed in) gets its mtime back, so is listed too
    assert r3.changed_paths == ["d0", "d0/l", "d1", "d1/f2", "d2", "d2/f0", "d3", "d3/new", "d4", "d4/f1",
                                "d4/sub"]
    b3 = backup(repo, [root], host="h", parent=b2.snapshot_id, changed_paths=r3.changed_paths)
    full3 = backup(repo, [root], host="h", parent=b2.snapshot_id)
    assert same_but_atime(repo, b3.tree, full3.tree)
    assert b3.stats.files_read == 3  # d1/f2, d3/new, and d4/f1 (its mode changed)
    assert not b3.stats.warnings
    out = tmp_path / "out"
    restore(repo, b3.snapshot_id, out)
    assert tree_listing(out) == tree_listing(root)
