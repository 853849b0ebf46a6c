"""Local-store specifics: crash safety under SIGKILL, ENOSPC on a small tmpfs, temp files, key collisions."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from frieze.core.errors import AlreadyExists, Conflict, NoSpace, NotFound
from frieze.repo.blobstore import local as local_mod
from frieze.repo.blobstore.local import LocalBlobStore

REPO = Path(__file__).resolve().parents[3]

# The child: puts deterministic blobs in a loop until it is killed. Payload of key run<r>/<i> is a
# function of (r, i), so the parent can check every visible blob byte for byte.
CHILD = r"""
import random, sys
from frieze.repo.blobstore.local import LocalBlobStore
root, run = sys.argv[1], int(sys.argv[2])
s = LocalBlobStore(root, clean_stale_temps=False)
print("ready", flush=True)
i = 0
while True:
    rnd = random.Random(run * 1_000_003 + i)
    # every third blob is long enough to be written with O_DIRECT (and not a multiple of 4 KiB)
    n = rnd.randint(0, 600_000) if i % 3 else rnd.randint(1 << 20, 2 << 20)
    s.put(f"run{run}/{i % 5}/{i:06d}", rnd.randbytes(n))
    i += 1
"""


def expected(key: str) -> bytes:
    run_s, _, i_s = key.split("/")
    run, i = int(run_s[3:]), int(i_s)
    rnd = random.Random(run * 1_000_003 + i)
    return rnd.randbytes(rnd.randint(0, 600_000) if i % 3 else rnd.randint(1 << 20, 2 << 20))


def _kill_loop(root: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    total_temps = 0
    verified: dict[str, int] = {}
    for run in range(kills):
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(run)], stdout=subprocess.PIPE,
                             env=env, cwd=REPO)
        try:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.0, 0.25))
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        assert p.returncode == -signal.SIGKILL
        s = LocalBlobStore(root, clean_stale_temps=False)
        seen = 0
        for info in s.list():  # new blobs byte for byte; earlier ones by size (all again at the end)
            assert "~" not in info.key
            if info.key in verified:
                assert info.size == verified[info.key], f"blob {info.key} changed after kill {run}"
            else:
                data = s.get(info.key)
                assert data == expected(info.key), f"blob {info.key} is damaged after kill {run}"
                assert info.size == len(data)
                verified[info.key] = info.size
            seen += 1
        temps = s.temp_files()
        total_temps += len(temps)
        print(f"RESULT local-kill9 run={run} blobs={seen} temps_left={len(temps)} ok=1")
    s = LocalBlobStore(root, clean_stale_temps=False)
    for info in s.list():
        assert s.get(info.key) == expected(info.key)
    assert len(verified) == len(list(s.list()))
    # young temp files survive a normal open; old ones are cleaned
    temps = s.temp_files()
    for t in temps:
        os.utime(t, (time.time() - 2 * local_mod.STALE_TEMP_SECONDS,) * 2)
    LocalBlobStore(root)  # cleans on open
    assert s.temp_files() == []
    print(f"RESULT local-kill9-summary kills={kills} temps_seen={total_temps} temps_cleaned={len(temps)}")


def test_kill9_during_puts_leaves_only_complete_blobs(tmp_path: Path) -> None:
    _kill_loop(tmp_path / "store", kills=12, seed=1)


@pytest.mark.heavy
def test_kill9_during_puts_heavy(tmp_path: Path) -> None:
    _kill_loop(tmp_path / "store", kills=150, seed=2)


def test_temp_files_invisible_and_cleaned_by_age(tmp_path: Path) -> None:
    s = LocalBlobStore(tmp_path)
    s.put("data/aa/one", b"1")
    young = tmp_path / "data" / "aa" / "two~123-abc.tmp"
    old = tmp_path / "data" / "aa" / "three~123-def.tmp"
    young.write_bytes(b"partial")
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "lost+found" / "x").write_bytes(b"?")
    assert [b.key for b in s.list()] == ["data/aa/one"]
    LocalBlobStore(tmp_path)
    assert young.exists() and not old.exists()
    assert s.clean_temps(older_than=0) == 1
    assert not young.exists()
    assert s.get("data/aa/one") == b"1"


def test_file_and_directory_keys_collide_clearly(tmp_path: Path) -> None:
    s = LocalBlobStore(tmp_path)
    s.put("a", b"file")
    with pytest.raises(Conflict, match=r"'a/b'.*collides"):
        s.put("a/b", b"x")
    s.put("d/e", b"x")
    with pytest.raises(Conflict, match="collides"):
        s.put("d", b"x")
    assert s.get("a") == b"file" and s.get("d/e") == b"x"
    with pytest.raises(NotFound):
        s.get("d")
    assert s.stat("d") is None
    s.delete("d")  # a directory is no blob: nothing happens
    assert s.get("d/e") == b"x"
    assert s.temp_files() == []


def test_falls_back_to_rename_noreplace_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(*_a: object, **_k: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(local_mod.os, "link", no_link)
    s = LocalBlobStore(tmp_path)
    s.put("k/v", b"via renameat2")
    assert s.get("k/v") == b"via renameat2"
    with pytest.raises(AlreadyExists):
        s.put("k/v", b"again")
    assert s.get("k/v") == b"via renameat2"
    assert s.temp_files() == []


def _direct_fds_written(monkeypatch: pytest.MonkeyPatch, refuse: int = 0) -> list[int]:
    """Spy on the direct writes (``pwritev`` through an O_DIRECT descriptor): their lengths (or refuse them)."""
    real = os.pwritev
    seen: list[int] = []

    def pwritev(fd: int, bufs: Any, off: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            if refuse:
                seen.append(-1)
                raise OSError(refuse, os.strerror(refuse))
            length = sum(len(b) for b in bufs)
            assert off % 4096 == 0 and length % 4096 == 0
            seen.append(length)
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "pwritev", pwritev)
    return seen


def _direct_io_works(d: Path) -> bool:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.close(fd)
        probe = d / "probe"
        probe.write_bytes(b"x")
        fd = os.open(probe, os.O_WRONLY | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


@pytest.mark.parametrize("size", [1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 4095, 17 << 20])
def test_long_blobs_are_written_with_o_direct_and_read_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   size: int) -> None:
    if not _direct_io_works(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    seen = _direct_fds_written(monkeypatch)
    s = LocalBlobStore(tmp_path / "s")
    data = os.urandom(size)
    s.put("data/aa/long", data)
    s.put("data/aa/short", data[: (1 << 20) - 1])  # below DIRECT_PUT_MIN: through the cache
    assert sum(seen) == size - size % 4096  # the aligned head went around the cache, the tail through it
    assert s.get("data/aa/long") == data and s.get("data/aa/short") == data[: (1 << 20) - 1]
    assert s.temp_files() == []
    s.put("data/aa/again", data[::-1])  # the copy buffer is reused (or grown) for the next put
    assert s.get("data/aa/again") == data[::-1]


def test_direct_writes_cover_whole_file_system_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a file system of 64 KiB blocks the direct head is whole blocks, so no block is written both ways."""
    if not _direct_io_works(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    seen = _direct_fds_written(monkeypatch)
    s = LocalBlobStore(tmp_path / "s")
    s._direct_align = 65536  # as write_alignment gives for f_bsize 65536
    data = os.urandom(2 * (1 << 20) + 65536 + 5000)
    s.put("data/aa/blocks", data)
    assert sum(seen) == 2 * (1 << 20) + 65536 and all(n % 65536 == 0 for n in seen)
    assert s.get("data/aa/blocks") == data


@pytest.mark.parametrize("refusal", [errno.EINVAL, errno.EOPNOTSUPP])
def test_refused_direct_writes_go_through_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    refusal: int) -> None:
    """A file system that refuses O_DIRECT transfers (EINVAL) gets the whole blob through the page cache; one
    that refuses opening with O_DIRECT (no descriptor) too; and direct_writes=False never tries."""
    data = os.urandom(3 * (1 << 20) + 7)
    refused = _direct_fds_written(monkeypatch, refuse=refusal)
    s = LocalBlobStore(tmp_path / "s")
    s.put("data/aa/refused", data)
    assert s.get("data/aa/refused") == data
    assert refused == ([-1] if _direct_io_works(tmp_path) else [])  # tried once, then the cache
    monkeypatch.setattr(local_mod, "reopen_direct", lambda fd: None)
    s.put("data/aa/no-fd", data)
    assert s.get("data/aa/no-fd") == data
    monkeypatch.undo()
    seen = _direct_fds_written(monkeypatch)
    off = LocalBlobStore(tmp_path / "off", direct_writes=False)
    off.put("data/aa/off", data)
    assert off.get("data/aa/off") == data and seen == []


def test_no_memory_for_the_direct_copy_writes_through_the_cache(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    seen = _direct_fds_written(monkeypatch)
    monkeypatch.setattr(local_mod.mmap, "mmap", no_memory)
    s = LocalBlobStore(tmp_path / "s")
    data = os.urandom(2 * (1 << 20) + 3)
    s.put("data/aa/nomem", data)
    assert s.get("data/aa/nomem") == data and seen == [] and s.temp_files() == []


def test_files_are_private_and_root_is_created(tmp_path: Path) -> None:
    root = tmp_path / "new" / "repo"
    s = LocalBlobStore(root)
    s.put("x/y", b"z")
    assert (root / "x" / "y").stat().st_mode & 0o777 == 0o600
    with pytest.raises(NotFound):
        LocalBlobStore(tmp_path / "absent", create=False)


# -- ENOSPC on a real small file system -------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(size: str = "4m") -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="frieze-enospc-"))
    mnt = d / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        mnt.rmdir()
        d.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()
            d.rmdir()


def test_enospc_names_it_changes_nothing_and_recovers() -> None:
    with small_tmpfs("4m") as mnt:
        s = LocalBlobStore(mnt / "repo")
        before: dict[str, bytes] = {}
        for i in range(3):
            before[f"data/old{i}"] = os.urandom(300_000)
            s.put(f"data/old{i}", before[f"data/old{i}"])
        written = 0
        err: NoSpace | None = None
        for i in range(100):
            blob = os.urandom(512 * 1024)
            try:
                s.put(f"data/fill{i:03d}", blob)
            except NoSpace as e:
                err = e
                break
            before[f"data/fill{i:03d}"] = blob
            written += 1
        assert err is not None, "the 4 MiB tmpfs never filled up"
        failed_key = f"data/fill{written:03d}"
        assert "ENOSPC" in str(err) and failed_key in str(err)
        assert err.details["errno"] == "ENOSPC"
        assert s.stat(failed_key) is None
        assert s.temp_files() == []
        assert {b.key for b in s.list()} == set(before)
        for k, v in before.items():
            assert s.get(k) == v, f"pre-existing blob {k} changed"
        # an existing key still answers AlreadyExists, not NoSpace, and keeps its bytes
        with pytest.raises(AlreadyExists):
            s.put("data/old0", b"x" * 100)
        assert s.get("data/old0") == before["data/old0"]
        # free space, and the same put succeeds
        s.delete("data/fill000")
        s.delete("data/fill001")
        retry = os.urandom(512 * 1024)
        s.put(failed_key, retry)
        assert s.get(failed_key) == retry
        print(f"RESULT local-enospc filled_blobs={written} error_names_enospc=1 preexisting_intact=1 "
              f"temps_left=0 recovered=1")


POINT_CHILD = r"""
import os, signal, sys
from frieze.repo.blobstore.local import LocalBlobStore
root, point, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
count = 0
def hook(p, key):
    global count
    if p == point:
        count += 1
        if count == nth:
            os.kill(os.getpid(), signal.SIGKILL)
s = LocalBlobStore(root, clean_stale_temps=False, on_point=hook)
for i in range(5):
    s.put(f"p/{i}", bytes([i]) * 100_000)
"""


@pytest.mark.parametrize("point", local_mod.PUT_POINTS)
def test_kill9_at_each_named_put_point(tmp_path: Path, point: str) -> None:
    r = subprocess.run([sys.executable, "-c", POINT_CHILD, str(tmp_path), point, "3"], capture_output=True,
                       timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
                       check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    s = LocalBlobStore(tmp_path, clean_stale_temps=False)
    keys = sorted(b.key for b in s.list())
    committed = point in ("linked", "dir_fsynced", "tmp_removed")
    assert keys == (["p/0", "p/1", "p/2"] if committed else ["p/0", "p/1"])
    for k in keys:
        i = int(k[2:])
        assert s.get(k) == bytes([i]) * 100_000
    temps = s.temp_files()
    assert len(temps) == (0 if point == "tmp_removed" else 1)
    # the interrupted key is usable afterwards: absent -> a put works; present -> AlreadyExists
    if committed:
        with pytest.raises(AlreadyExists):
            s.put("p/2", b"again")
    else:
        s.put("p/2", b"again")
    print(f"RESULT local-kill-point point={point} visible={len(keys)} temps_left={len(temps)} ok=1")


def test_die_at_hook_is_off_unless_set_and_refuses_a_bad_spec(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from frieze.core.errors import UsageError
    from frieze.repo.blobstore.local import DIE_AT_ENV, DieAt, LocalBlobStore

    monkeypatch.delenv(DIE_AT_ENV, raising=False)
    assert LocalBlobStore(tmp_path / "a").on_point is None  # production: no hook at all
    for bad in ("pack", "pack.nope", "nokind.write", "pack.write:0", "pack.write:x"):
        monkeypatch.setenv(DIE_AT_ENV, bad)
        with pytest.raises(UsageError, match=DIE_AT_ENV):
            LocalBlobStore(tmp_path / "b")
    monkeypatch.setenv(DIE_AT_ENV, "index.rename:3")
    s = LocalBlobStore(tmp_path / "c")
    assert isinstance(s.on_point, DieAt) and (s.on_point.kind, s.on_point.step, s.on_point.n) == ("index", "linked", 3)
    s.put("data/ab/x", b"1")  # other kinds do not count
    assert s.on_point.seen == 0
