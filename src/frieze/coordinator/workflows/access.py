"""The access workflow: read a restore point's data through the coordinator without restoring it to a host.
The chosen paths (or the whole volume) are extracted from the repository (every blob authenticated), packed
into one tar archive in the coordinator's staging area, and offered for download at
``GET /v1/access/{operation id}/archive`` until it expires; no agent and no host is involved.

    check → extract (repository → staging/access/<op>/tree)  ⟶ checkpoint "extracted" (undo: remove_access)
    pack (tree → archive.tar, SHA-256; the tree removed)      ⟶ checkpoint "packed"    (undo: remove_access)
    finish (result: size, digest, files, expiry)              ⟶ checkpoint "done"

For a single file, ``GET /v1/restore-points/{rp}/content`` streams it at once; this operation is for many
files or a whole volume (a long job that must survive a coordinator restart). Expired archives are removed by
:func:`sweep` (on each new access request and each download).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from pydantic import BaseModel, Field

from frieze.coordinator.workflows import common as C
from frieze.core.clock import iso, now
from frieze.core.errors import NotFound
from frieze.engine import Checkpoint, Resources, TaskContext, Workflow, task


class AccessArgs(BaseModel):
    restore_point_id: str
    volume_id: str
    paths: list[str] = Field(default_factory=list)
    ttl_s: float = 86400.0


class AccessVars(BaseModel):
    repository_id: str = ""
    repo_snapshot: str = ""
    files: int = 0
    bytes: int = 0
    archive_bytes: int = 0
    sha256: str = ""


Ctx = TaskContext[AccessArgs, AccessVars]


def access_root(staging: Path) -> Path:
    return staging / "access"


def access_dir(staging: Path, op_id: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}", op_id):  # an operation id, never a path
        raise NotFound(f"access {op_id!r} does not exist", access=op_id)
    return access_root(staging) / op_id


def sweep(staging: Path, at: float | None = None) -> int:
    """Remove every access archive whose expiry has passed (and leftovers without a record); returns how many."""
    root = access_root(staging)
    if not root.is_dir():
        return 0
    t = time.time() if at is None else at
    n = 0
    for d in root.iterdir():
        meta = d / "meta.json"
        try:
            expires = float(json.loads(meta.read_text())["expires"])
        except (OSError, ValueError, KeyError):
            expires = d.stat().st_mtime + 7 * 86400  # an unfinished one: kept a week (its operation may run)
        if expires < t:
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


@task
def extract(ctx: Ctx) -> None:
    from frieze.repo.restore import restore as repo_restore

    c = C.coord()
    ctx.vars.repository_id, ctx.vars.repo_snapshot, _vol = c.restore_point_volume(ctx.args.restore_point_id,
                                                                                  ctx.args.volume_id)
    d = access_dir(c.config.staging_dir, ctx.op_id)
    shutil.rmtree(d, ignore_errors=True)
    (d / "tree").mkdir(parents=True)
    with c.repos.open(ctx.vars.repository_id) as repo:
        res = repo_restore(repo, ctx.vars.repo_snapshot, str(d / "tree"), paths=list(ctx.args.paths) or None,
                           progress=lambda ev: ctx.progress(bytes_done=ev.bytes_done, bytes_total=ev.bytes_total))
    ctx.vars.files, ctx.vars.bytes = res.stats.files, res.stats.bytes_written
    ctx.log(f"extracted {res.stats.files} files ({res.stats.bytes_written} bytes) of repository snapshot "
            f"{ctx.vars.repo_snapshot[:12]}")


class _Hashing:
    """A write-only file object that hashes what passes through it (the archive is not read back)."""

    def __init__(self, f: Any, h: Any) -> None:
        self.f, self.h = f, h

    def write(self, b: bytes) -> int:
        self.h.update(b)
        return int(self.f.write(b))

    def tell(self) -> int:  # tarfile asks where a write-only stream starts
        return int(self.f.tell())


@task
def pack(ctx: Ctx) -> None:
    c = C.coord()
    d = access_dir(c.config.staging_dir, ctx.op_id)
    tmp = d / "archive.tar.part"
    h = hashlib.sha256()
    with tmp.open("wb") as f:
        out = _Hashing(f, h)
        with tarfile.open(fileobj=cast(IO[bytes], out), mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(os.listdir(d / "tree")):
                tar.add(d / "tree" / name, arcname=name, recursive=True)  # symlinks stored as links, not followed
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / "archive.tar")
    shutil.rmtree(d / "tree")
    ctx.vars.archive_bytes, ctx.vars.sha256 = (d / "archive.tar").stat().st_size, h.hexdigest()
    ctx.log(f"packed archive.tar ({ctx.vars.archive_bytes} bytes, sha256 {ctx.vars.sha256[:16]}…)")


@task
def finish(ctx: Ctx) -> None:
    c = C.coord()
    d = access_dir(c.config.staging_dir, ctx.op_id)
    expires = time.time() + ctx.args.ttl_s
    (d / "meta.json").write_text(json.dumps({"expires": expires, "sha256": ctx.vars.sha256}))
    result: dict[str, Any] = {
        "restore_point_id": ctx.args.restore_point_id, "volume_id": ctx.args.volume_id,
        "paths": ctx.args.paths, "files": ctx.vars.files, "bytes": ctx.vars.bytes,
        "archive": f"/v1/access/{ctx.op_id}/archive", "archive_bytes": ctx.vars.archive_bytes,
        "sha256": ctx.vars.sha256, "expires_at": iso(datetime.fromtimestamp(expires, UTC)),
        "finished_at": iso(now())}
    c.record_result(ctx.op_id, result)


@task
def remove_access(ctx: Ctx) -> None:
    shutil.rmtree(access_dir(C.coord().config.staging_dir, ctx.op_id), ignore_errors=True)


class AccessWorkflow(Workflow[AccessArgs, AccessVars]):
    name = "access"
    Args = AccessArgs
    Vars = AccessVars
    forward = [extract, Checkpoint("extracted", undo_from="remove_access"),
               pack, Checkpoint("packed", undo_from="remove_access"), finish, Checkpoint("done")]
    undo = [remove_access]

    @classmethod
    def resources(cls, args: AccessArgs) -> Resources:
        return Resources()
