"""Reading a snapshot's data for the coordinator's mover, and writing restored data into a target.

Reading (below a snapshot image only): a listing with BLAKE3 digests, one file (optionally a byte range),
or the whole image as an uncompressed tar stream. Paths are relative, ``/``-separated, without ``..``,
empty or NUL parts; every parent is checked with ``lstat`` and files are opened ``O_NOFOLLOW``, so nothing
outside the image is ever read. The provider's ``.frieze-snapshots`` directory at the top is skipped.

Writing (restore): the target must lie inside a configured volume or a ``restore_roots`` entry
(:func:`check_target`); files are written to a temporary name in their directory (``O_EXCL|O_NOFOLLOW``),
hashed while written, checked against the announced BLAKE3 digest, fsynced and renamed; a mismatch removes
the temporary file and raises :class:`IntegrityError`. No path component is ever followed through a symlink;
absolute symlink targets and anything but files, directories and symlinks are refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import blake3

from frieze.core.errors import Conflict, Forbidden, IntegrityError, NotFound, UsageError
from frieze.protocol.models import FileEntry

SKIP_TOP = ".frieze-snapshots"
CHUNK = 1 << 20


def check_rel(path: str) -> str:
    if (not path or path.startswith("/") or "\x00" in path or "\\" in path
            or any(p in ("", ".", "..") for p in path.split("/"))):
        raise UsageError(f"unsafe relative path {path!r}", path=path)
    return path


# -- reading ---------------------------------------------------------------------------------------------
def list_entries(root: str, extras: str | None = None) -> list[FileEntry]:
    """The tree under ``root``; files under ``extras`` (same relative layout) are added or take precedence."""
    base = _list(root)
    if not extras or not os.path.isdir(extras):
        return base
    over = {e.path: e for e in _list(extras) if e.type == "file"}
    out = [over.pop(e.path) if e.path in over else e for e in base]
    return out + sorted(over.values(), key=lambda e: e.path)


def _list(root: str) -> list[FileEntry]:
    out: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if dirpath == root and SKIP_TOP in dirnames:
            dirnames.remove(SKIP_TOP)
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out.append(FileEntry(path=rel, type="symlink", target=os.readlink(full), mtime_ns=st.st_mtime_ns,
                                     uid=st.st_uid, gid=st.st_gid))
            elif stat.S_ISDIR(st.st_mode):
                out.append(FileEntry(path=rel, type="dir", mode=st.st_mode & 0o7777, mtime_ns=st.st_mtime_ns,
                                     uid=st.st_uid, gid=st.st_gid))
            elif stat.S_ISREG(st.st_mode):
                out.append(FileEntry(path=rel, type="file", size=st.st_size, mode=st.st_mode & 0o7777,
                                     mtime_ns=st.st_mtime_ns, digest=_digest(full), uid=st.st_uid, gid=st.st_gid))
    return out


def _digest(path: str) -> str:
    h = blake3.blake3()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while b := f.read(CHUNK):
            h.update(b)
    return h.hexdigest()


def _walk_parents(root: str, rel: str) -> str:
    """The full path of ``rel`` under ``root`` after checking no parent is a symlink or a non-directory."""
    check_rel(rel)
    parts = rel.split("/")
    cur = root
    for p in parts[:-1]:
        cur = os.path.join(cur, p)
        try:
            st = os.lstat(cur)
        except FileNotFoundError as e:
            raise NotFound(f"{rel!r} does not exist in the snapshot", path=rel) from e
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{rel!r}: {p!r} is not a directory", path=rel)
    if parts[0] == SKIP_TOP:
        raise NotFound(f"{rel!r} does not exist in the snapshot", path=rel)
    return os.path.join(cur, parts[-1])


def open_file(root: str, rel: str, extras: str | None = None) -> tuple[IO[bytes], int]:
    """An open regular file of the snapshot (or of its ``extras``, which take precedence) and its size."""
    if extras:
        check_rel(rel)
        with contextlib.suppress(NotFound, UsageError):
            if os.path.isfile(os.path.join(extras, rel)):
                return open_file(extras, rel)
    full = _walk_parents(root, rel)
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as e:
        raise NotFound(f"{rel!r} does not exist in the snapshot", path=rel) from e
    except OSError as e:
        raise UsageError(f"{rel!r} is not a regular file of the snapshot ({e.strerror})", path=rel) from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UsageError(f"{rel!r} is not a regular file of the snapshot", path=rel)
    return os.fdopen(fd, "rb"), st.st_size


def iter_range(f: IO[bytes], offset: int, length: int) -> Iterator[bytes]:
    try:
        f.seek(offset)
        left = length
        while left > 0:
            b = f.read(min(CHUNK, left))
            if not b:
                break
            left -= len(b)
            yield b
    finally:
        f.close()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(offset, length) of a single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range; None for no header."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise UsageError(f"unsupported Range header {header!r} (one bytes range only)")
    a, _, b = spec.strip().partition("-")
    try:
        if a == "":
            n = int(b)
            start = max(0, size - n)
            end = size - 1
        else:
            start = int(a)
            end = int(b) if b else size - 1
    except ValueError as e:
        raise UsageError(f"malformed Range header {header!r}") from e
    end = min(end, size - 1)
    if start < 0 or (size > 0 and (start > end or start >= size)):
        raise UsageError(f"Range {header!r} is outside the file's {size} bytes")
    return start, max(0, end - start + 1)


def iter_tar(root: str, extras: str | None = None) -> Iterator[bytes]:
    """The image under ``root`` (plus ``extras``) as an uncompressed PAX tar stream, file by file."""
    written = 0
    for e in list_entries(root, extras):
        ti = tarfile.TarInfo(e.path)
        ti.mtime = e.mtime_ns // 1_000_000_000
        ti.mode = e.mode
        if e.type == "dir":
            ti.type = tarfile.DIRTYPE
        elif e.type == "symlink":
            ti.type = tarfile.SYMTYPE
            ti.linkname = e.target or ""
        else:
            ti.type = tarfile.REGTYPE
            ti.size = e.size
        hdr = ti.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
        written += len(hdr)
        yield hdr
        if e.type == "file":
            f, _ = open_file(root, e.path, extras)
            sent = 0
            with f:
                while sent < e.size:
                    b = f.read(min(CHUNK, e.size - sent))
                    if not b:
                        raise IntegrityError(f"{e.path!r} shrank while being read from the snapshot", path=e.path)
                    sent += len(b)
                    yield b
            pad = (-sent) % tarfile.BLOCKSIZE
            written += sent + pad
            if pad:
                yield b"\0" * pad
    end = b"\0" * (2 * tarfile.BLOCKSIZE)
    written += len(end)
    yield end + b"\0" * ((-written) % tarfile.RECORDSIZE)


# -- writing ---------------------------------------------------------------------------------------------
def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _real_nearest(path: str) -> str:
    """realpath of ``path``'s nearest existing ancestor, joined with the rest (nothing created)."""
    p = os.path.abspath(path)
    rest: list[str] = []
    while not os.path.lexists(p):
        p, tail = os.path.split(p)
        rest.insert(0, tail)
    return os.path.join(os.path.realpath(p), *rest) if rest else os.path.realpath(p)


def check_target(target: str, allowed_roots: list[str]) -> str:
    """The absolute target, if it lies inside one of ``allowed_roots``; :class:`Forbidden` otherwise."""
    if not os.path.isabs(target) or "\x00" in target or SKIP_TOP in Path(target).parts:
        raise UsageError(f"restore target {target!r} must be an absolute path outside snapshot directories",
                         target=target)
    real = _real_nearest(target)
    for r in allowed_roots:
        if _inside(real, os.path.realpath(r)):
            return real
    raise Forbidden(f"restore target {target} is not inside a configured volume or restore root", target=target)


def target_state(target: str) -> dict[str, Any]:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return {"exists": False, "empty": True}
    if not stat.S_ISDIR(st.st_mode):
        return {"exists": True, "empty": False}
    return {"exists": True, "empty": not any(n != SKIP_TOP for n in os.listdir(target))}


def _ensure_dirs(root: str, rel_parent: list[str]) -> str:
    """Create ``root`` and each parent below it, never through a symlink."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    if os.path.islink(root) or not os.path.isdir(root):
        raise Conflict(f"restore target {root} is not a directory", target=root)
    cur = root
    for p in rel_parent:
        cur = os.path.join(cur, p)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o700)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise Conflict(f"restore: {cur} exists and is not a directory", path=cur)
    return cur


def _own(path: str, uid: int | None, gid: int | None) -> None:
    """Give ``path`` (not following a symlink) its recorded owner; an agent that is not root keeps its own."""
    if uid is None and gid is None:
        return
    with contextlib.suppress(PermissionError):
        os.lchown(path, -1 if uid is None else uid, -1 if gid is None else gid)


def put_entry(target: str, rel: str, kind: str, chunks: Iterable[bytes], *, mode: int = 0o644,
              digest: str | None = None, link: str | None = None, mtime_ns: int | None = None,
              force: bool = False, uid: int | None = None, gid: int | None = None) -> dict[str, Any]:
    """Write one entry under ``target`` (see module doc). An existing entry is replaced only with ``force``.
    A file is checked against ``digest`` (BLAKE3 hex) when given (the file API always gives one). ``uid`` and
    ``gid``: the numeric owner to give it (set before the mode, so set-id bits survive; an agent that is not
    root cannot and keeps its own)."""
    check_rel(rel)
    if rel.split("/")[0] == SKIP_TOP:
        raise UsageError(f"restore path {rel!r} is inside the snapshot directory", path=rel)
    parts = rel.split("/")
    parent = _ensure_dirs(target, parts[:-1])
    full = os.path.join(parent, parts[-1])
    exists = os.path.lexists(full)
    if kind == "dir":
        if (exists and not os.path.isdir(full)) or os.path.islink(full):
            raise Conflict(f"restore: {full} exists and is not a directory", path=full)
        if not exists:
            os.mkdir(full, 0o700)
        _own(full, uid, gid)
        os.chmod(full, mode & 0o7777)
        return {"written": not exists, "bytes": 0}
    if exists and not force:
        raise Conflict(f"restore: {full} already exists (use force to overwrite)", path=full)
    if kind == "symlink":
        if not link or link.startswith("/") or "\x00" in link:
            raise UsageError(f"restore: symlink {rel!r} has an absolute or empty target", path=rel)
        tmp = os.path.join(parent, f".frieze-tmp-{secrets.token_hex(6)}")
        os.symlink(link, tmp)
        _own(tmp, uid, gid)
        os.replace(tmp, full)
        return {"written": True, "bytes": 0}
    if kind != "file":
        raise UsageError(f"restore: entry type {kind!r} of {rel!r} is not allowed", path=rel)
    tmp = os.path.join(parent, f".frieze-tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    h = blake3.blake3()
    n = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for b in chunks:
                h.update(b)
                f.write(b)
                n += len(b)
            f.flush()
            os.fsync(f.fileno())
        if digest is not None and h.hexdigest() != digest:
            raise IntegrityError(f"restore: {rel!r} received {n} bytes whose BLAKE3 does not match the announced "
                                 "digest; nothing kept", path=rel)
        _own(tmp, uid, gid)
        os.chmod(tmp, mode & 0o7777)
        if mtime_ns:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        if exists and os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        os.replace(tmp, full)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return {"written": True, "bytes": n}


def extract_tar(tar_path: str, target: str, *, force: bool) -> dict[str, Any]:
    """Unpack a tar file under ``target`` with the same rules as :func:`put_entry` (files are hashed as they
    are written; there is no announced digest in a tar, so the file's integrity is the stream's)."""
    files = 0
    total = 0
    with tarfile.open(tar_path, mode="r:") as tf:
        for m in tf:
            rel = m.name.rstrip("/")
            while rel.startswith("./"):
                rel = rel[2:]
            if not rel or rel == ".":
                continue
            check_rel(rel)
            if m.isdir():
                put_entry(target, rel, "dir", [], mode=m.mode or 0o755, force=force)
            elif m.issym():
                put_entry(target, rel, "symlink", [], link=m.linkname, force=force)
            elif m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                r = put_entry(target, rel, "file", _chunks(f), mode=m.mode, digest=None,
                              mtime_ns=int(m.mtime) * 1_000_000_000, force=force)
                files += 1
                total += int(r["bytes"])
            else:
                raise UsageError(f"restore: tar member {m.name!r} is not a file, directory or symlink", path=m.name)
    return {"files": files, "bytes": total}


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while b := f.read(CHUNK):
        yield b


def remove_target(target: str) -> bool:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(target)
    else:
        os.unlink(target)
    return True
