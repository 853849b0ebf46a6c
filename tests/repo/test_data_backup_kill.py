"""kill -9 during backup (real processes, real local blob store): every committed snapshot restores byte for
byte, check stays clean, and a re-run reuses what the killed run had made durable.

CI: 50 kills at random moments (``FRIEZE_KILLS`` overrides; the ``heavy`` variant runs 200), plus 30 kills at
named points: the backup subprocess kills itself with SIGKILL (``FRIEZE_TEST_DIE_AT``, read by the local blob
store) right after a pack, index, manifest or snapshot-list object's temp-file write, fsync, link (the
rename), directory fsync or temp removal.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from frieze.core.errors import FriezeError
from frieze.repo.blobstore.local import DIE_AT_ENV, PUT_POINTS, LocalBlobStore
from frieze.repo.check import check
from frieze.repo.pack import DATA_PREFIX, parse_trailer
from frieze.repo.repository import Repository
from frieze.repo.restore import restore
from frieze.repo.types import KdfParams, RepoParams

PARAMS = RepoParams(cdc_min=16 * 1024, cdc_avg=64 * 1024, cdc_max=256 * 1024, pack_size=128 * 1024,
                    kdf=KdfParams.cheap_for_tests())

CHILD = textwrap.dedent("""
    import sys
    from frieze.repo.blobstore.local import DIE_AT_ENV, PUT_POINTS, LocalBlobStore
    from frieze.repo.repository import Repository
    from frieze.repo.backup import backup
    repo = Repository.open(LocalBlobStore(sys.argv[1]), "pw")
    print("ready", flush=True)
    sys.stdin.readline()
    r = backup(repo, [sys.argv[2]], host="h", label={"round": int(sys.argv[3])}, threads=2)
    print("committed", r.snapshot_id, r.stats.chunks, r.stats.chunks_new, flush=True)
""")


def _fill(src: Path, rng: random.Random) -> None:
    src.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (src / f"f{i:02d}").write_bytes(rng.randbytes(rng.randint(1, 200_000)))


def _mutate(src: Path, rng: random.Random, n: int) -> None:
    for _ in range(2):
        p = src / f"f{rng.randrange(12):02d}"
        data = bytearray(p.read_bytes())
        pos = rng.randrange(len(data))
        data[pos:pos + 100] = rng.randbytes(100)
        p.write_bytes(bytes(data))
    (src / "round").write_bytes(b"%d" % n)
    (src / "new.bin").write_bytes(rng.randbytes(rng.randint(500_000, 1_500_000)))  # new data to store


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _store_bytes(root: Path) -> int:
    """Bytes of the pack objects under ``root/data`` (temp files of a writer in progress excluded)."""
    total = 0
    for dirpath, _, files in os.walk(root / "data"):
        for name in files:
            if name.endswith(".tmp"):
                continue
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _rewritten(repo: Any) -> tuple[int, int]:
    """(bytes of blobs stored more than once across packs, packs that do not parse)."""
    seen: set[bytes] = set()
    dup_bytes = bad = 0
    for b in repo.store.list(DATA_PREFIX):
        try:
            entries = parse_trailer(repo.ring, repo.store.get(b.key), b.key)
        except FriezeError:
            bad += 1
            continue
        for e in entries:
            if e[0] in seen:
                dup_bytes += e[4]
            seen.add(e[0])
    return dup_bytes, bad


class Child:
    def __init__(self, store: Path, src: Path, n: int, die_at: str | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd() / "src"), str(Path.cwd())])}
        env.pop(DIE_AT_ENV, None)
        if die_at is not None:
            env[DIE_AT_ENV] = die_at
        self.p = subprocess.Popen([sys.executable, "-c", CHILD, str(store), str(src), str(n)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.p.stdout is not None and self.p.stdout.readline().strip() == b"ready"

    def go(self) -> float:
        assert self.p.stdin is not None
        self.p.stdin.write(b"go\n")
        self.p.stdin.flush()
        return time.monotonic()

    def kill_after(self, delay: float) -> bool:
        """SIGKILL after ``delay`` s (if still running). True if the child committed first."""
        try:
            self.p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()
            return False
        out = self.p.stdout.read() if self.p.stdout else b""
        if self.p.returncode != 0:
            err = self.p.stderr.read() if self.p.stderr else b""
            raise AssertionError(f"child failed rc={self.p.returncode}: {err.decode(errors='replace')[-2000:]}")
        return b"committed" in out

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f:
                f.close()


def _run_kills(tmp_path: Path, kills: int) -> None:
    rng = random.Random(4242)
    store_dir, src = tmp_path / "store", tmp_path / "src"
    Repository.init(LocalBlobStore(store_dir), "pw", params=PARAMS)
    _fill(src, rng)
    expected: dict[int, dict[str, str]] = {}

    # Timing of one uninterrupted run, to spread kills over its whole length.
    c = Child(store_dir, src, 0)
    expected[0] = _digest(src)
    t0 = c.go()
    assert c.kill_after(60)
    duration = time.monotonic() - t0
    c.close()

    killed = committed = 0
    killed_added = 0
    n = 0
    while killed < kills:
        n += 1
        _mutate(src, rng, n)
        expected[n] = _digest(src)
        c = Child(store_dir, src, n)
        try:
            t0 = c.go()
            before = _store_bytes(store_dir)
            if c.kill_after(rng.uniform(0.0, duration * 1.2)):
                committed += 1
                duration = time.monotonic() - t0
            else:
                killed += 1
                killed_added += _store_bytes(store_dir) - before
        finally:
            c.close()

    repo = Repository.open(LocalBlobStore(store_dir), "pw")
    report = check(repo)
    errors = [p for p in report.problems if p.severity == "error"]
    assert errors == [], [p.to_dict() for p in errors[:5]]
    snaps = repo.list_snapshots()
    restored = 0
    for s in snaps:
        snap = repo.load_snapshot(s.id)
        out = tmp_path / f"out-{s.id}"
        restore(repo, s.id, out)
        assert _digest(out) == expected[snap.label["round"]], f"snapshot {s.id} round {snap.label['round']}"
        restored += 1
    # A killed run loses at most one checkpoint window plus the packs in flight: the re-run rewrites
    # no more than that (a blob stored twice is a blob a re-run could not reuse).
    dup_bytes, bad_packs = _rewritten(repo)
    window = 4 * PARAMS.pack_size + 3 * PARAMS.pack_size
    reuse = 1 - dup_bytes / killed_added if killed_added else 1.0
    print(f"RESULT R-KILL kills={killed} committed={committed} snapshots={len(snaps)} restored_ok={restored} "
          f"check_errors=0 killed_runs_stored={killed_added} rewritten_bytes={dup_bytes} reuse={reuse:.3f} "
          f"unparsable_packs={bad_packs}")
    assert dup_bytes <= killed * window


def test_rerun_reuses_what_a_killed_backup_stored(tmp_path: Path) -> None:
    """Kill a backup after it stored >= 20 checkpoint windows of new data; the re-run reuses >= 90 % of it."""
    rng = random.Random(99)
    store_dir, src = tmp_path / "store", tmp_path / "src"
    Repository.init(LocalBlobStore(store_dir), "pw", params=PARAMS)
    ratios = []
    for cycle in range(2):
        (src / f"c{cycle}").mkdir(parents=True)
        for i in range(12):  # 30 MB, killed at 12 MB: a wide window for a test process starved under load
            (src / f"c{cycle}" / f"{i}").write_bytes(rng.randbytes(2_500_000))
        before = _store_bytes(store_dir)
        c = Child(store_dir, src, cycle)
        try:
            c.go()
            target = before + 12_000_000
            while c.p.poll() is None and _store_bytes(store_dir) < target:
                time.sleep(0.01)
            assert c.p.poll() is None, "backup finished before it could be killed"
            c.p.send_signal(signal.SIGKILL)
            c.p.wait()
        finally:
            c.close()
        killed_stored = _store_bytes(store_dir) - before
        dup_before, _ = _rewritten(Repository.open(LocalBlobStore(store_dir), "pw"))
        r = Child(store_dir, src, 100 + cycle)
        try:
            r.go()
            assert r.kill_after(120)
        finally:
            r.close()
        dup_after, _ = _rewritten(Repository.open(LocalBlobStore(store_dir), "pw"))
        ratios.append(1 - (dup_after - dup_before) / killed_stored)
    print(f"RESULT R-KILL-REUSE cycles=2 reuse_min={min(ratios):.3f} reuse={[round(x, 3) for x in ratios]}")
    assert min(ratios) >= 0.9


def test_kill_during_backup(tmp_path: Path) -> None:
    _run_kills(tmp_path, int(os.environ.get("FRIEZE_KILLS", "50")))


@pytest.mark.heavy
def test_kill_during_backup_heavy(tmp_path: Path) -> None:
    _run_kills(tmp_path, 200)


# -- named points ---------------------------------------------------------------------------------------------

#: (object kind, occurrences): every step of PUT_POINTS at each; a run stores ~16 new packs and writes 3 index
#: files (every 8 packs, and at commit), so "pack ...:9" dies mid-run with one index already written.
NAMED_KINDS = [("pack", (1, 9)), ("index", (1, 2)), ("manifest", (1,)), ("snaplist", (1,))]


def _mutate_named(src: Path, rng: random.Random, n: int) -> None:
    _mutate(src, rng, n)
    (src / "new.bin").write_bytes(rng.randbytes(2_000_000))  # ~16 packs of 128 KiB, all new


def _verify(repo: Repository, expected: dict[int, dict[str, str]], out: Path) -> int:
    """check is clean (reading every pack) and every committed snapshot restores byte for byte; returns how
    many snapshots were restored."""
    report = check(repo, read_data=True)
    errors = [p.to_dict() for p in report.problems if p.severity == "error"]
    assert errors == [], errors[:5]
    n = 0
    for s in repo.list_snapshots():
        snap = repo.load_snapshot(s.id)
        target = out / f"r{n}"
        restore(repo, s.id, target)
        assert _digest(target) == expected[snap.label["round"]], f"snapshot {s.id} round {snap.label['round']}"
        n += 1
    return n


def _run_child(store_dir: Path, src: Path, n: int, die_at: str | None) -> tuple[int, bytes]:
    c = Child(store_dir, src, n, die_at)
    try:
        c.go()
        assert c.p.stdin is not None and c.p.stderr is not None
        c.p.stdin.close()
        err = c.p.stderr.read()
        c.p.wait(timeout=120)
        return c.p.returncode, err
    finally:
        c.close()


def test_kill_at_named_points(tmp_path: Path) -> None:
    rng = random.Random(777)
    kills = clean = restored = 0
    reuse: list[float] = []
    points: set[str] = set()
    for kind, occurrences in NAMED_KINDS:
        store_dir, src = tmp_path / kind / "store", tmp_path / kind / "src"
        Repository.init(LocalBlobStore(store_dir), "pw", params=PARAMS)
        _fill(src, rng)
        expected = {0: _digest(src)}
        rc, err = _run_child(store_dir, src, 0, None)
        assert rc == 0, err.decode(errors="replace")[-2000:]
        n = 0
        for step in PUT_POINTS:
            for nth in occurrences:
                n += 1
                _mutate_named(src, rng, n)
                expected[n] = _digest(src)
                point = f"{kind}.{step}:{nth}"
                before = _store_bytes(store_dir)
                rc, err = _run_child(store_dir, src, n, point)
                assert rc == -signal.SIGKILL and f"{DIE_AT_ENV} {point}".encode() in err, \
                    (point, rc, err.decode(errors="replace")[-2000:])
                kills += 1
                points.add(f"{kind}.{step}")
                killed_stored = _store_bytes(store_dir) - before
                repo = Repository.open(LocalBlobStore(store_dir), "pw")
                restored += _verify(repo, expected, tmp_path / kind / f"out{n}")
                clean += 1
                dup_before, _ = _rewritten(repo)
                rc, err = _run_child(store_dir, src, n, None)  # the re-run
                assert rc == 0, err.decode(errors="replace")[-2000:]
                dup_after, _ = _rewritten(Repository.open(LocalBlobStore(store_dir), "pw"))
                if killed_stored > 0:
                    reuse.append(1 - (dup_after - dup_before) / killed_stored)
        repo = Repository.open(LocalBlobStore(store_dir), "pw")
        restored += _verify(repo, expected, tmp_path / kind / "final")
    reuse_min = min(reuse)
    print(f"RESULT R-KILL-NAMED points={len(points)} kills={kills} check_clean={clean} restored={restored} "
          f"reuse_min_pct={100 * reuse_min:.1f} reuse_measured={len(reuse)}")
    assert len(points) == 4 * len(PUT_POINTS) and clean == kills
    assert reuse_min >= 0.9, reuse
