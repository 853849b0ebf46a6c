"""The copy provider's pre-copy (``prepare`` before the freeze, delta pass under it): random changes between
the two never make the image differ from the volume at the snapshot, with the stat shortcut active (the
ctime margin set to 0, so files untouched since the pre-copy are kept without comparing) and without it."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

import frieze.host.providers._tree as tree
from frieze.host.providers._layout import make_mutable, snapshot_root
from frieze.host.providers.copy import CopyProvider


def _state(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".frieze-snapshots"]
        for n in filenames + dirnames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if p.is_symlink():
                out[rel] = "l:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = f"d:{oct(st.st_mode & 0o7777)}"
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = f"f:{oct(st.st_mode & 0o7777)}:{st.st_mtime_ns}:{digest}"
    return out


def _mutate(rng: random.Random, vol: Path, files: list[Path]) -> None:
    op = rng.choice(["overwrite-same-size", "pwrite", "append", "truncate", "delete", "create", "mkdir",
                     "chmod", "symlink"])
    live = [f for f in files if f.exists() and not f.is_symlink()]
    if op in ("overwrite-same-size", "pwrite", "append", "truncate", "delete", "chmod") and not live:
        op = "create"
    if op == "overwrite-same-size":
        f = rng.choice(live)
        st = os.stat(f)
        f.write_bytes(os.urandom(st.st_size))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only ctime tells
    elif op == "pwrite":
        f = rng.choice(live)
        size = f.stat().st_size
        with open(f, "r+b") as fh:
            fh.seek(rng.randrange(max(size, 1)))
            fh.write(os.urandom(rng.randint(1, 5000)))
    elif op == "append":
        with open(rng.choice(live), "ab") as fh:
            fh.write(os.urandom(rng.randint(1, 3 << 20)))
    elif op == "truncate":
        f = rng.choice(live)
        os.truncate(f, rng.randrange(f.stat().st_size + 1))
    elif op == "delete":
        rng.choice(live).unlink()
    elif op == "chmod":
        os.chmod(rng.choice(live), rng.choice([0o600, 0o640, 0o644, 0o400]))
    elif op == "mkdir":
        d = vol / f"d{rng.randrange(1000)}"
        d.mkdir(exist_ok=True)
        f = d / f"n{rng.randrange(1000)}"
        f.write_bytes(os.urandom(rng.randint(0, 200_000)))
        files.append(f)
    elif op == "symlink":
        p = vol / f"s{rng.randrange(1000)}"
        if not os.path.lexists(p):
            p.symlink_to(rng.choice(["a", "../x", "/etc/passwd"]))
    else:
        f = vol / f"c{rng.randrange(1000)}"
        f.write_bytes(os.urandom(rng.randint(0, 2 << 20)))
        files.append(f)


@pytest.mark.parametrize("shortcut", [True, False], ids=["stat-shortcut", "compare-all"])
def test_random_changes_between_prepare_and_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     shortcut: bool) -> None:
    monkeypatch.setattr(tree, "CTIME_MARGIN_NS", 0 if shortcut else 10**18)
    rng = random.Random(20261202 + shortcut)
    vol = tmp_path / "vol"
    vol.mkdir()
    files: list[Path] = []
    for i in range(12):
        f = vol / f"f{i}"
        f.write_bytes(os.urandom(rng.choice([0, 100, 70_000, 1 << 20, (3 << 20) + 17])))
        files.append(f)
    p = CopyProvider()
    kept = patched = 0
    try:
        for rnd in range(25):
            sid = f"r{rnd}"
            time.sleep(0.02)  # so that a change after the record moves ctime past it (one coarse tick)
            assert p.prepare(str(vol), sid)["prepared"]
            time.sleep(0.02)
            for _ in range(rng.randint(0, 6)):
                _mutate(rng, vol, files)
            expected = _state(vol)
            ref = p.snapshot(str(vol), sid)
            assert _state(Path(ref.path)) == expected, f"round {rnd}"
            pre = p.last_pre_copy
            assert pre is not None
            kept += pre.kept
            patched += pre.taken - pre.kept
            p.delete(ref)
        root = Path(snapshot_root(str(vol), p.name))
        assert not [n for n in os.listdir(root) if n.startswith(".")]
    finally:
        make_mutable(str(tmp_path))
    if shortcut:
        assert kept > 0  # the shortcut was really taken
    else:
        assert kept == 0
    assert patched > 0


def test_pre_copy_of_a_crashed_prepare_is_compared_not_trusted(tmp_path: Path) -> None:
    """A pre-copy without its stat record (prepare died before saving it) is still used, every file compared."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "a").write_bytes(os.urandom(100_000))
    p = CopyProvider()
    try:
        p.prepare(str(vol), "s1")
        root = Path(snapshot_root(str(vol), p.name))
        (root / ".pre-s1.json").unlink()
        with open(root / ".pre-s1" / "a", "r+b") as f:  # a half-written pre-copy
            f.truncate(5000)
        expected = _state(vol)
        ref = p.snapshot(str(vol), "s1")
        assert _state(Path(ref.path)) == expected
        assert p.last_pre_copy is not None and p.last_pre_copy.kept == 0 and p.last_pre_copy.taken == 1
    finally:
        make_mutable(str(tmp_path))


def test_stale_pre_copies_of_other_snapshots_are_swept(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "a").write_bytes(b"a")
    p = CopyProvider()
    p.prepare(str(vol), "old")
    p.prepare(str(vol), "recent")
    root = Path(snapshot_root(str(vol), p.name))
    past = time.time() - 2 * 3600
    for n in (".pre-old", ".pre-old.json"):
        os.utime(root / n, (past, past))
    p.prepare(str(vol), "new")
    assert sorted(os.listdir(root)) == [".pre-new", ".pre-new.json", ".pre-recent", ".pre-recent.json"]
