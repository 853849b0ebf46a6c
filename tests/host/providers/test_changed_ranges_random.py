"""Randomized rounds on real btrfs/XFS: between consecutive snapshots apply random writes, punched holes,
truncations, extensions, renames over, in-volume reflink copies and deletions to a few files; after each
round ``changed_ranges(prev, cur)`` must cover every 512-byte piece that differs, report ``[]`` for files
untouched, and stay incremental. Default 3 rounds; ``-m heavy`` runs 25 rounds per file system."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from tests.support.loopfs import loop_fs_or_skip

from frieze.host.providers.base import SnapshotProvider
from frieze.host.providers.btrfs import BtrfsProvider
from frieze.host.providers.reflink import ReflinkProvider

FILES = ["a.dat", "b.dat", "c.dat", "d/e.dat"]
PIECE = 512


def _op(rnd: random.Random, vol: Path, touched: set[str]) -> None:
    name = rnd.choice(FILES)
    p = vol / name
    kind = rnd.choice(["write", "write", "write", "punch", "truncate", "extend", "replace", "reflink", "delete"])
    if not p.exists():
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(rnd.randbytes(rnd.randrange(1, 2 << 20)))
        touched.add(name)
        return
    size = p.stat().st_size
    touched.add(name)
    if kind == "write":
        with open(p, "r+b") as f:
            f.seek(rnd.randrange(0, size + 1))
            f.write(rnd.randbytes(rnd.randrange(1, 100_000)))
    elif kind == "punch" and size > 8192:
        off = rnd.randrange(0, size - 4096)
        subprocess.run(["fallocate", "--punch-hole", "--offset", str(off), "--length",
                        str(rnd.randrange(1, size - off)), str(p)], check=True)
    elif kind == "truncate":
        os.truncate(p, rnd.randrange(0, size + 1))
    elif kind == "extend":
        os.truncate(p, size + rnd.randrange(1, 300_000))
    elif kind == "replace":
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(rnd.randbytes(rnd.randrange(1, 1 << 20)))
        os.rename(tmp, p)
    elif kind == "reflink":
        src = vol / rnd.choice(FILES)
        if src.exists() and src != p:
            subprocess.run(["cp", "--reflink=always", str(src), str(p)], check=True)
    elif kind == "delete":
        p.unlink()


def _check(old_root: Path, new_root: Path, cr: dict[str, list[tuple[int, int]] | None],
           touched: set[str]) -> tuple[int, int]:
    reported = total = 0
    for name in FILES:
        np_, op = new_root / name, old_root / name
        if not np_.exists():
            assert name not in cr
            continue
        assert name in cr, f"{name} missing from changed_ranges"
        ranges = cr[name]
        new = np_.read_bytes()
        total += len(new)
        if not op.exists():
            assert ranges is None
            reported += len(new)
            continue
        if name not in touched:
            assert ranges == [], f"{name} untouched but reported {ranges}"
        if ranges is None:
            reported += len(new)
            continue
        reported += sum(n for _a, n in ranges)
        old = op.read_bytes()
        for off in range(0, len(new), PIECE):
            if new[off:off + PIECE] != old[off:off + len(new[off:off + PIECE])]:
                hit = next(i for i in range(off, min(off + PIECE, len(new))) if i >= len(old) or new[i] != old[i])
                assert any(a <= hit < a + n for a, n in ranges), f"{name}: byte {hit} changed but not reported"
    return reported, total


def _run(kind: str, rounds: int) -> None:
    provider: SnapshotProvider = BtrfsProvider() if kind == "btrfs" else ReflinkProvider()
    with loop_fs_or_skip("btrfs" if kind == "btrfs" else "xfs", 512) as fs:
        rnd = random.Random(f"{kind}-{rounds}")
        vol = fs.volume
        for name in FILES:
            (vol / name).parent.mkdir(exist_ok=True)
            (vol / name).write_bytes(rnd.randbytes(rnd.randrange(1, 3 << 20)))
        prev = provider.snapshot(str(vol), "r000")
        rep_sum = tot_sum = 0
        for r in range(1, rounds + 1):
            touched: set[str] = set()
            for _ in range(rnd.randrange(0, 4)):
                _op(rnd, vol, touched)
            cur = provider.snapshot(str(vol), f"r{r:03d}")
            cr = provider.changed_ranges(prev, cur)
            rep, tot = _check(Path(prev.path), Path(cur.path), cr, touched)
            rep_sum, tot_sum = rep_sum + rep, tot_sum + tot
            provider.delete(prev)
            prev = cur
        print(f"RESULT changed_ranges_random provider={provider.name} fs={kind} rounds={rounds} "
              f"reported_bytes={rep_sum} total_bytes={tot_sum}")


@pytest.mark.parametrize("kind", ["btrfs", "reflink-xfs"])
def test_random_rounds(kind: str) -> None:
    _run(kind, 3)


@pytest.mark.heavy
@pytest.mark.parametrize("kind", ["btrfs", "reflink-xfs"])
def test_random_rounds_heavy(kind: str) -> None:
    _run(kind, 25)
