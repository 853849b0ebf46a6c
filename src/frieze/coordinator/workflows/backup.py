"""The backup workflow: the recipe of DESIGN.md section 3, one task per line, each segment with its undo.

    ensure_policy → ensure_protection_set                     ⟶ checkpoint "ready"      (nothing to undo)
    prepare_snapshots → quiesce (every app, every host, one epoch and lease)
                                                              ⟶ checkpoint "quiesced"   (undo: unquiesce)
    snapshot → poll_snapshots → unquiesce                     ⟶ checkpoint "snapshotted" (undo: delete_snapshots…)
    move_data → poll_moved                                    ⟶ checkpoint "moved"      (undo: discard_moved…)
    record_restore_point                                      ⟶ checkpoint "recorded"   (undo: forget_restore_point…)
    delete_host_snapshots → apply_retention → report          ⟶ checkpoint "done"       (committed: no undo)

Undo path: forget_restore_point → discard_moved → delete_snapshots → unquiesce. Every undo task is idempotent
and safe after a partial forward task: snapshot ids are deterministic (``frieze-<op>-<volume>``) and every app
of the plan is unquiesced with the plan's epoch, whether or not its quiesce was recorded. The repository holds
nothing committed for this backup after undo (moved snapshots are forgotten), and the restore point is written
in one catalog transaction, keyed by the operation id, only after every volume is in the repository; if that
segment fails after the row was written, undo deletes the row again before the data is discarded.

Preparation: before the freeze, every volume's provider may prepare its snapshot (``prepare_snapshot``; the
copy provider pre-copies the tree so that the copy under the freeze only writes what changed since). It never
changes what the snapshot holds, only how long the freeze lasts. A preparation left by a backup that fails
before its snapshot is removed by ``delete_snapshots`` (snapshotted segment) or by the provider's next
``prepare`` on that volume (pre-copies of other ids older than an hour).

Freeze windows: for each app the restore point records the coordinator's wall-clock bounds of its freeze
(``quiesce_sent``, ``frozen_from`` = the agent confirmed the quiesce, ``frozen_until`` = the thaw was sent,
``thawed_by`` = the agent confirmed it; one clock for every host) and the window the agent measured
(``frozen_ms``). Every app was frozen throughout [``frozen_from``, ``frozen_until``]; the label's
``consistent_instant`` is the intersection of those intervals (empty would mean no common instant).

Honest labels: ``application-consistent`` only when every app of the set was quiesced and thawed inside its
lease; ``crash-consistent`` when no quiesce was asked for (or the set has no app); ``quiesce-skipped`` with
the members and reasons when a quiesce failed and the policy allowed going on. A lease that ran out
before the snapshot was taken fails the backup (LeaseExpired) rather than mislabel it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from frieze.coordinator.catalog.models import Policy, ProtectionSet, Repository, RestorePoint
from frieze.coordinator.metrics import FREEZE_WINDOW, RESTORE_POINTS
from frieze.coordinator.policies import retention_policy
from frieze.coordinator.workflows import common as C
from frieze.core.clock import iso, now
from frieze.core.errors import Conflict, FriezeError, LeaseExpired, NotFound, UsageError
from frieze.core.ids import new_id
from frieze.engine import Checkpoint, Resources, TaskContext, Workflow, task

#: database files are cut in fixed blocks of the engine's page size (cost follows change)
FIXED_BLOCKS: dict[str, dict[str, int]] = {
    "sqlite": {"**/*.db": 4096, "**/*.sqlite": 4096, "**/*.sqlite3": 4096},
    "postgres": {"**/base/**": 8192, "**/global/**": 8192},
    "mariadb": {"**/*.ibd": 16384, "**/ibdata*": 16384},
}


class BackupArgs(BaseModel):
    protection_set_id: str
    policy_id: str | None = None
    repository_id: str
    consistency: str = "application"
    on_quiesce_failure: str = "abort"
    lease_s: float = Field(default=60.0, gt=0)
    keep_host_snapshots: int = 0
    retention: dict[str, Any] = Field(default_factory=dict)
    scheduled_for: str | None = None


class BackupVars(BaseModel):
    pset_name: str = ""
    apps: list[dict[str, Any]] = Field(default_factory=list)  # {id, name, host_id, volume_id, kind}
    volumes: list[dict[str, Any]] = Field(default_factory=list)  # {id, name, host_id, path, provider}
    host_names: dict[str, str] = Field(default_factory=dict)
    epoch: int = 0
    quiesced: dict[str, dict[str, Any]] = Field(default_factory=dict)
    skipped: list[dict[str, str]] = Field(default_factory=list)
    freeze: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: what each engine reported at unquiesce (backup_label, LSNs, binlog position), by app id
    engine_info: dict[str, dict[str, Any]] = Field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = Field(default_factory=dict)
    moved: dict[str, dict[str, Any]] = Field(default_factory=dict)
    restore_point_id: str | None = None
    consistency: str = ""


Ctx = TaskContext[BackupArgs, BackupVars]


def iso_ms(t: float) -> str:
    """A wall-clock instant (seconds since the epoch) as RFC 3339 UTC with microseconds."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def consistent_instant(freeze: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The interval during which every app was frozen (the latest ``frozen_from`` to the earliest
    ``frozen_until``), with ``overlap`` False when there is no common instant; None without freeze times."""
    starts = [f["frozen_from"] for f in freeze if f.get("frozen_from")]
    ends = [f["frozen_until"] for f in freeze if f.get("frozen_until")]
    if not starts or len(starts) != len(freeze) or len(ends) != len(freeze):
        return None
    lo, hi = max(starts), min(ends)
    width = (datetime.fromisoformat(hi) - datetime.fromisoformat(lo)).total_seconds() * 1000.0
    return {"from": lo, "until": hi, "overlap": lo <= hi, "width_ms": round(width, 3)}


def snap_id(op_id: str, volume_id: str) -> str:
    return f"frieze-{op_id.removeprefix('op-')[:16]}-{volume_id.removeprefix('vol-')[:12]}"


# -- ready --------------------------------------------------------------------------------------------
@task
def ensure_policy(ctx: Ctx) -> None:
    """The policy (if any) and the target repository exist and the repository opens with its password."""
    c = C.coord()
    if ctx.args.scheduled_for is not None and ctx.args.policy_id is not None:
        # exactly once: the first operation that runs binds itself to the scheduled tick; any other one
        # (a re-submit by another coordinator that raced it) stops here, before it touches anything
        owner = c.bind_schedule_run(ctx.args.policy_id, ctx.args.scheduled_for, ctx.op_id)
        if owner != ctx.op_id:
            raise Conflict(f"the run of policy {ctx.args.policy_id} scheduled for {ctx.args.scheduled_for} was "
                           f"already started by operation {owner}; this duplicate does nothing",
                           policy=ctx.args.policy_id, tick=ctx.args.scheduled_for, operation=owner)
    with c.catalog.session() as s:
        if ctx.args.policy_id is not None and s.get(Policy, ctx.args.policy_id) is None:
            raise NotFound(f"policy {ctx.args.policy_id!r} no longer exists", policy=ctx.args.policy_id)
        repo = s.get(Repository, ctx.args.repository_id)
        if repo is None:
            raise NotFound(f"repository {ctx.args.repository_id!r} does not exist")
        name = repo.name
    with c.repos.open(ctx.args.repository_id):
        pass
    ctx.log(f"repository {name} opens")


@task
def ensure_protection_set(ctx: Ctx) -> None:
    """Resolve the members, check every host can be called (state, version), take a new freeze epoch."""
    c = C.coord()
    with c.catalog.session() as s:
        ps = s.get(ProtectionSet, ctx.args.protection_set_id)
        if ps is None:
            raise NotFound(f"protection set {ctx.args.protection_set_id!r} does not exist")
        ctx.vars.pset_name = ps.name
        app_ids, vol_ids = list(ps.app_ids), list(ps.volume_ids)
    apps = [C.app(a) for a in app_ids]
    vols = [C.volume(v) for v in vol_ids]
    ctx.vars.apps = [{"id": a.id, "name": a.name, "kind": a.kind, "host_id": h} for a, h in apps]
    ctx.vars.volumes = [{"id": v.id, "name": v.name, "path": v.path, "provider": v.provider, "host_id": h}
                        for v, h in vols]
    hosts = sorted({h for _a, h in apps} | {h for _v, h in vols})
    results = C.parallel(hosts, lambda h: C.agent(h).version())
    err = C.first_error(results)
    if err is not None:
        raise err
    ctx.vars.host_names = {h: C.host_row(h).name for h in hosts}
    ctx.vars.epoch = c.next_epoch()
    ctx.log(f"protection set {ps.name}: {len(apps)} app(s), {len(vols)} volume(s) on {len(hosts)} host(s); "
            f"freeze epoch {ctx.vars.epoch}")


# -- quiesced -----------------------------------------------------------------------------------------
@task
def prepare_snapshots(ctx: Ctx) -> None:
    """Before any freeze: let each volume's provider prepare the snapshot (copy: a pre-copy)."""
    if ctx.args.consistency == "crash":
        return  # no freeze to shorten

    def one(v: dict[str, Any]) -> dict[str, Any]:
        ref, host = C.volume(v["id"])
        return C.agent(host).prepare_snapshot(ref, snap_id(ctx.op_id, v["id"]))

    results = C.parallel(ctx.vars.volumes, one)
    for v, r, e in results:
        if e is None and isinstance(r, dict) and r.get("prepared"):
            ctx.log(f"prepared the snapshot of volume {v['name']} ({v['provider']}): {r.get('files')} file(s) "
                    f"pre-copied in {r.get('ms')} ms, outside the freeze")
    err = C.first_error(results)
    if err is not None:
        raise err


@task
def quiesce(ctx: Ctx) -> None:
    """Quiesce every app of the set at once under one epoch and lease (a barrier: all or abort)."""
    if ctx.args.consistency == "crash":
        ctx.log("crash-consistent backup asked for: no quiesce")
        return
    epoch, lease = ctx.vars.epoch, ctx.args.lease_s

    def one(a: dict[str, Any]) -> dict[str, Any]:
        ref, host = C.app(a["id"], with_secrets=True)
        t0 = time.time()
        info = C.agent(host).quiesce(ref, epoch=epoch, lease_s=lease)
        return {"at": t0, "done": time.time(), "info": info}

    results = C.parallel(ctx.vars.apps, one)
    for a, r, e in results:
        if e is None:
            ctx.vars.quiesced[a["id"]] = r
            ctx.log(f"quiesced {a['name']} (epoch {epoch}, lease {lease:g} s)")
        elif ctx.args.on_quiesce_failure == "continue":
            reason = e.message if isinstance(e, FriezeError) else type(e).__name__
            ctx.vars.skipped.append({"app": a["name"], "reason": reason})
            ctx.log(f"quiesce of {a['name']} failed, going on as the policy allows: {reason}", "warning")
    err = C.first_error([x for x in results if ctx.args.on_quiesce_failure != "continue"])
    if err is not None:
        raise err


# -- snapshotted --------------------------------------------------------------------------------------
@task
def snapshot(ctx: Ctx) -> None:
    """Snapshot every volume with its provider (idempotent by the deterministic snapshot id)."""

    def one(v: dict[str, Any]) -> dict[str, Any]:
        ref, host = C.volume(v["id"])
        return C.agent(host).snapshot(ref, snap_id=snap_id(ctx.op_id, v["id"]), epoch=ctx.vars.epoch)

    results = C.parallel(ctx.vars.volumes, one)
    for v, r, e in results:
        if e is None:
            ctx.vars.snapshots[v["id"]] = {"snap_id": snap_id(ctx.op_id, v["id"]), **(r or {})}
            ctx.log(f"snapshot of volume {v['name']} ({v['provider']})")
    err = C.first_error(results)
    if err is not None:
        raise err


@task
def poll_snapshots(ctx: Ctx) -> None:
    """Every snapshot exists on its host."""
    for v in ctx.vars.volumes:
        ref, host = C.volume(v["id"])
        sid = snap_id(ctx.op_id, v["id"])
        deadline = time.monotonic() + 30
        while not C.agent(host).snapshot_exists(ref, sid):
            if time.monotonic() > deadline:
                raise LeaseExpired(f"snapshot {sid} of volume {v['name']} did not appear", volume=v["name"])
            time.sleep(0.2)


@task
def unquiesce(ctx: Ctx) -> None:
    """Release every freeze. Forward: record each app's freeze window and require that its lease held.
    Undo: unquiesce every app of the plan with the plan's epoch (safe if never or half quiesced)."""
    if ctx.args.consistency == "crash" and not ctx.undoing:
        return
    targets = ctx.vars.apps if ctx.undoing else [a for a in ctx.vars.apps if a["id"] in ctx.vars.quiesced]
    epoch = ctx.vars.epoch

    sent: dict[str, tuple[float, float]] = {}

    def one(a: dict[str, Any]) -> dict[str, Any]:
        ref, host = C.app(a["id"], with_secrets=True)
        t0 = time.time()
        r = C.agent(host).unquiesce(ref, epoch=epoch)
        sent[a["id"]] = (t0, time.time())
        return r

    results = C.parallel(targets, one)
    now_s = time.time()
    for a, r, e in results:
        if e is not None:
            continue
        q = ctx.vars.quiesced.get(a["id"], {})
        ms = r.get("frozen_ms") if isinstance(r, dict) else None
        if ms is None and q:
            ms = (now_s - q["done"]) * 1000.0
        # a freeze we recorded that the agent no longer held (changed=False) was released early: by the
        # guardian when its lease ran out, or by a restart of the agent; either way not held throughout
        held = bool(r.get("lease_held", r.get("changed", True))) if isinstance(r, dict) else False
        t_sent, t_done = sent.get(a["id"], (now_s, now_s))
        ctx.vars.freeze[a["id"]] = {
            "app": a["name"], "host": ctx.vars.host_names.get(a["host_id"], a["host_id"]),
            "frozen_ms": round(float(ms or 0.0), 3), "lease_held": held,
            "quiesce_sent": iso_ms(q["at"]) if q else None, "frozen_from": iso_ms(q["done"]) if q else None,
            "frozen_until": iso_ms(t_sent), "thawed_by": iso_ms(t_done)}
        info = r.get("info") if isinstance(r, dict) else None
        if isinstance(info, dict) and not ctx.undoing:
            ctx.vars.engine_info[a["id"]] = {k: v for k, v in info.items() if isinstance(v, str | int | float | bool)}
        if ms is not None:
            FREEZE_WINDOW.labels(a["kind"]).observe(float(ms) / 1000.0)
        ctx.log(f"unquiesced {a['name']}: freeze window {float(ms or 0):.1f} ms")
    err = C.first_error(results)
    if err is not None:
        raise err
    if not ctx.undoing:
        lost = [f["app"] for f in ctx.vars.freeze.values() if not f["lease_held"]]
        if lost:
            raise LeaseExpired(f"the freeze of {', '.join(lost)} was released before the snapshot was done "
                               "(lease ran out or the agent restarted); the snapshot is not application-consistent",
                               apps=lost)


@task
def delete_snapshots(ctx: Ctx) -> None:
    """Undo: delete this backup's host snapshots (every volume of the plan; idempotent)."""
    for v in ctx.vars.volumes:
        ref, host = C.volume(v["id"])
        C.agent(host).delete_snapshot(ref, snap_id(ctx.op_id, v["id"]))
        ctx.log(f"deleted snapshot of volume {v['name']}")


# -- moved --------------------------------------------------------------------------------------------
@task
def move_data(ctx: Ctx) -> None:
    """The mover: read each snapshot through its agent (checked against the host's digests), then write it
    into the repository with the volume's previous snapshot as parent (only what changed is stored)."""
    from frieze.repo.backup import backup as repo_backup

    c = C.coord()
    total = 0
    with c.repos.open(ctx.args.repository_id) as repo:
        snapshots = repo.list_snapshots()
        existing = {tuple(s.tags): s.id for s in snapshots}
        for v in ctx.vars.volumes:
            tags = [f"op:{ctx.op_id}", f"volume:{v['id']}"]
            if v["id"] in ctx.vars.moved:
                continue
            ref, host = C.volume(v["id"])
            sid = snap_id(ctx.op_id, v["id"])
            src = C.agent(host).source(ref, sid)
            base = total

            def prog(done: int, _total: int, base: int = base) -> None:
                ctx.progress(bytes_done=base + done)

            res = c.mover.ingest(v["id"], src, cancelled=ctx.cancel_requested, what=f"{v['name']}", progress=prog)
            ctx.log(f"received {res.bytes_received} of {res.bytes_total} bytes ({res.files_received} of "
                    f"{res.files} files) of volume {v['name']} from {ctx.vars.host_names.get(host, host)}")
            prior = existing.get(tuple(tags))
            if prior is not None:
                ctx.vars.moved[v["id"]] = {"snapshot_id": prior, "bytes_total": res.bytes_total, "bytes_new": 0,
                                           "bytes_received": res.bytes_received}
                continue
            added = _add_engine_files(ctx, v, c.mover.mirror_dir(v["id"]))
            kinds = {a["kind"] for a in ctx.vars.apps if C.app(a["id"])[0].data_dir.startswith(v["path"])}
            globs: dict[str, int] = {}
            for k in kinds:
                globs.update(FIXED_BLOCKS.get(k, {}))
            label = {"protection_set": ctx.vars.pset_name, "volume": v["name"], "operation": ctx.op_id,
                     "epoch": ctx.vars.epoch, "pending": True}
            parent, ranges = _hint_parent(snapshots, v["id"], res.ranges_parent, res.changed_ranges)
            if ranges is not None:
                ctx.log(f"volume {v['name']}: the provider's changed ranges since the parent snapshot are used "
                        f"({len(ranges)} files listed)")
            # what this ingest changed in the mirror, and the engine files written after it: the backup walks
            # only their directories when the parent is the snapshot of the mirror's previous state
            ppaths, cpaths = _hint_parent(snapshots, v["id"], res.mirror_parent, [*res.changed_paths, *added])
            if cpaths is not None:
                if parent == "auto":
                    parent = ppaths
                elif parent != ppaths:
                    cpaths = None
            if cpaths is not None:
                ctx.log(f"volume {v['name']}: {len(cpaths)} paths changed since the parent snapshot; the other "
                        "directories are kept from it unwalked")
            br = repo_backup(repo, [c.mover.mirror_dir(v["id"])], host=f"frieze:{v['id']}", tags=tags,
                             label=label, parent=parent, changed_ranges=ranges, changed_paths=cpaths,
                             fixed_block_globs=globs or None)
            st = br.stats
            ctx.vars.moved[v["id"]] = {"snapshot_id": br.snapshot_id, "bytes_total": st.bytes_total,
                                       "bytes_new": st.bytes_new, "bytes_received": res.bytes_received,
                                       "bytes_read": st.bytes_read, "files": st.files,
                                       "subtrees_kept": st.subtrees_kept}
            total += res.bytes_total
            ctx.progress(bytes_done=total, bytes_total=total)
            ctx.log(f"volume {v['name']} → repository snapshot {br.snapshot_id[:12]} "
                    f"({st.bytes_total} bytes in {st.files} files; {st.bytes_read} bytes read, {st.bytes_new} "
                    f"bytes new; {st.subtrees_kept} directories kept from the parent unwalked)")


_H = TypeVar("_H")


def _hint_parent(snapshots: list[Any], volume_id: str, ranges_parent: str | None,
                 ranges: _H | None) -> tuple[str, _H | None]:
    """The repository parent and a hint for a volume's backup (the changed-ranges map, or the changed paths).

    The mover's hint is relative to the host snapshot ``ranges_parent``; it is valid for the repository's
    backup only when the parent repository snapshot (the volume's newest) was made from that very host
    snapshot (its ``op:`` tag names the operation whose snapshot it was). Otherwise the metadata rule alone
    decides what is read (``parent="auto"``, no hint)."""
    if ranges is None or not ranges_parent:
        return "auto", None
    mine = [s for s in snapshots if s.host == f"frieze:{volume_id}"]
    if not mine:
        return "auto", None
    newest = max(mine, key=lambda s: s.time)
    ops = [t.removeprefix("op:") for t in newest.tags if t.startswith("op:")]
    if ops and snap_id(ops[0], volume_id) == ranges_parent:
        return newest.id, ranges
    return "auto", None


#: files an engine hands back at unquiesce that belong in the copy's data directory (PostgreSQL's
#: non-exclusive backup: backup_label and tablespace_map), by the key of the unquiesce info
ENGINE_FILES = {"backup_label": "backup_label", "tablespace_map": "tablespace_map"}


def _add_engine_files(ctx: Ctx, v: dict[str, Any], mirror: Path) -> list[str]:
    """Write what an app's engine returned at unquiesce into its data directory in the volume's mirror, so
    that the restore point restores to a startable copy (e.g. PostgreSQL's backup_label). Returns the mirror
    paths written."""
    written: list[str] = []
    for a in ctx.vars.apps:
        info = ctx.vars.engine_info.get(a["id"], {})
        ref, _host = C.app(a["id"])
        if not (ref.data_dir == v["path"] or ref.data_dir.startswith(v["path"].rstrip("/") + "/")):
            continue
        rel = "/".join(p for p in ref.data_dir[len(v["path"]):].split("/") if p and p != ".")
        for key, fname in ENGINE_FILES.items():
            text = info.get(key)
            if isinstance(text, str) and text:
                dest = mirror / rel / fname if rel else mirror / fname
                if dest.is_symlink():
                    dest.unlink()
                dest.write_text(text)
                written.append(f"{rel}/{fname}" if rel else fname)
                ctx.log(f"added {fname} of {a['name']} to the copy of volume {v['name']}")
    return written


@task
def poll_moved(ctx: Ctx) -> None:
    """Every volume's repository snapshot is committed and loads."""
    c = C.coord()
    with c.repos.open(ctx.args.repository_id) as repo:
        for v in ctx.vars.volumes:
            m = ctx.vars.moved.get(v["id"])
            if m is None:
                raise UsageError(f"volume {v['name']} was not moved", volume=v["name"])
            repo.load_snapshot(m["snapshot_id"])


@task
def discard_moved(ctx: Ctx) -> None:
    """Undo: forget the repository snapshots this backup committed (no restore point refers to them)."""
    from frieze.repo.prune import forget

    c = C.coord()
    with c.repos.open(ctx.args.repository_id) as repo:
        ids = [s.id for s in repo.list_snapshots() if f"op:{ctx.op_id}" in s.tags]
        if ids:
            forget(repo, ids=ids, host="frieze-coordinator")
            ctx.log(f"forgot {len(ids)} repository snapshot(s) of this backup")


# -- recorded -----------------------------------------------------------------------------------------
def _label(ctx: Ctx) -> tuple[str, dict[str, Any]]:
    freeze = list(ctx.vars.freeze.values())
    if ctx.args.consistency == "crash":
        return "crash-consistent", {"reason": "no quiesce was asked for"}
    if not ctx.vars.apps:
        return "crash-consistent", {"reason": "the protection set has no application to quiesce"}
    if ctx.vars.skipped:
        return "quiesce-skipped", {"reason": "a quiesce failed and the policy allowed going on",
                                   "skipped": ctx.vars.skipped, "freeze": freeze,
                                   "consistent_instant": consistent_instant(freeze)}
    return "application-consistent", {"freeze": freeze, "consistent_instant": consistent_instant(freeze)}


def _engine_facts(ctx: Ctx, app_id: str) -> dict[str, Any]:
    """What the engine reported at quiesce (e.g. a binlog position) and at unquiesce (e.g. LSNs), plain
    values only, without the files that went into the copy."""
    q = ctx.vars.quiesced.get(app_id, {}).get("info") or {}
    raw = q.get("info")
    at_quiesce: dict[str, Any] = raw if isinstance(raw, dict) else {}
    out = {k: v for k, v in at_quiesce.items() if isinstance(v, str | int | float | bool)}
    out.update({k: v for k, v in ctx.vars.engine_info.get(app_id, {}).items() if k not in ENGINE_FILES})
    return out


@task
def record_restore_point(ctx: Ctx) -> None:
    """Write the restore point (one transaction, keyed by the operation id: idempotent)."""
    c = C.coord()
    consistency, label = _label(ctx)
    label["epoch"] = ctx.vars.epoch
    label["engine"] = {a["name"]: _engine_facts(ctx, a["id"]) for a in ctx.vars.apps}
    label["scheduled_for"] = ctx.args.scheduled_for
    vols = []
    for v in ctx.vars.volumes:
        m = ctx.vars.moved[v["id"]]
        vols.append({"volume_id": v["id"], "volume": v["name"], "host_id": v["host_id"],
                     "host": ctx.vars.host_names.get(v["host_id"]), "path": v["path"], "provider": v["provider"],
                     "host_snapshot": snap_id(ctx.op_id, v["id"]), **m})
    created = False
    with c.catalog.session() as s:
        from sqlalchemy import select

        rp = s.scalar(select(RestorePoint).where(RestorePoint.operation_id == ctx.op_id))
        if rp is None:
            rp = RestorePoint(id=new_id("rp"), operation_id=ctx.op_id, protection_set_id=ctx.args.protection_set_id,
                              repository_id=ctx.args.repository_id, policy_id=ctx.args.policy_id,
                              consistency=consistency, label=label, volumes=vols, freeze_epoch=ctx.vars.epoch,
                              bytes_total=sum(int(x.get("bytes_total", 0)) for x in vols),
                              bytes_new=sum(int(x.get("bytes_new", 0)) for x in vols))
            s.add(rp)
            created = True
        rp_id = rp.id
    # committed from here; a failure before the "recorded" checkpoint undoes it (forget_restore_point)
    ctx.vars.restore_point_id = rp_id
    ctx.vars.consistency = consistency
    if created:
        RESTORE_POINTS.labels(consistency).inc()
    ctx.log(f"restore point {rp_id}: {consistency}")


@task
def forget_restore_point(ctx: Ctx) -> None:
    """Undo: delete this operation's restore point row if the recording segment wrote it (keyed by the
    operation id, so also after a crash that lost the variables), before its data is discarded."""
    from sqlalchemy import select

    c = C.coord()
    with c.catalog.session() as s:
        rp = s.scalar(select(RestorePoint).where(RestorePoint.operation_id == ctx.op_id))
        if rp is None:
            return
        rid = rp.id
        s.delete(rp)
    ctx.vars.restore_point_id = None
    ctx.log(f"deleted the restore point {rid} this backup had recorded")


# -- done ---------------------------------------------------------------------------------------------
@task
def delete_host_snapshots(ctx: Ctx) -> None:
    """Delete host snapshots beyond the policy's ``keep_host_snapshots`` (this one first when it is 0)."""
    c = C.coord()
    keep = ctx.args.keep_host_snapshots
    with c.catalog.session() as s:
        from sqlalchemy import select

        rps = list(s.scalars(select(RestorePoint).where(
            RestorePoint.protection_set_id == ctx.args.protection_set_id).order_by(RestorePoint.created_at.desc())))
        stale = [(rp.id, list(rp.volumes)) for rp in rps[keep:]]
    for _rid, vols in stale:
        for v in vols:
            if v.get("host_snapshot_deleted"):
                continue
            try:
                ref, host = C.volume(v["volume_id"])
                C.agent(host).delete_snapshot(ref, v["host_snapshot"])
            except NotFound:
                continue
    with c.catalog.session() as s:
        for rid, _vols in stale:
            rp = s.get(RestorePoint, rid)
            if rp is not None:
                rp.volumes = [{**v, "host_snapshot_deleted": True} for v in rp.volumes]
    ctx.log(f"host snapshots kept: {keep}; deleted those of {len(stale)} older restore point(s)")


@task
def apply_retention(ctx: Ctx) -> None:
    """Forget the restore points of this policy that its retention does not keep (core.retention decides,
    per restore point), and their repository snapshots; the repository's prune reclaims space later."""
    from sqlalchemy import select

    from frieze.core.retention import SnapshotRef, apply_policy
    from frieze.repo.prune import forget

    pol = retention_policy(ctx.args.retention)
    if pol is None:
        return
    c = C.coord()
    with c.catalog.session() as s:
        rps = [(rp.id, rp.created_at, [v["snapshot_id"] for v in rp.volumes]) for rp in s.scalars(select(
            RestorePoint).where(RestorePoint.protection_set_id == ctx.args.protection_set_id,
                                RestorePoint.forgotten.is_(False), RestorePoint.policy_id == ctx.args.policy_id))]
    refs = [SnapshotRef(rid, t.replace(tzinfo=t.tzinfo or UTC)) for rid, t, _ in rps]
    drop = {d.id for d in apply_policy(refs, pol, now()) if not d.keep}
    snaps = [sid for rid, _t, sids in rps if rid in drop for sid in sids]
    with c.catalog.session() as s:
        for rid in drop:
            rp = s.get(RestorePoint, rid)
            if rp is not None:
                rp.forgotten = True
    if snaps:
        with c.repos.open(ctx.args.repository_id) as repo:
            have = {x.id for x in repo.list_snapshots()}
            gone = [x for x in snaps if x in have]
            if gone:
                forget(repo, ids=gone, host="frieze-coordinator")
    ctx.log(f"retention: {len(drop)} restore point(s) forgotten, {len(rps) - len(drop)} kept")


@task
def report(ctx: Ctx) -> None:
    c = C.coord()
    moved = list(ctx.vars.moved.values())
    data = {"restore_point_id": ctx.vars.restore_point_id, "consistency": ctx.vars.consistency,
            "freeze_epoch": ctx.vars.epoch, "freeze": list(ctx.vars.freeze.values()),
            "consistent_instant": consistent_instant(list(ctx.vars.freeze.values())),
            "bytes_total": sum(int(m.get("bytes_total", 0)) for m in moved),
            "bytes_new": sum(int(m.get("bytes_new", 0)) for m in moved),
            "bytes_received": sum(int(m.get("bytes_received", 0)) for m in moved),
            "volumes": [{"volume": v["name"], "host": ctx.vars.host_names.get(v["host_id"]),
                         "repository_snapshot": ctx.vars.moved[v["id"]]["snapshot_id"]} for v in ctx.vars.volumes],
            "finished_at": iso(now())}
    c.record_result(ctx.op_id, data)
    ctx.log(f"backup done: restore point {ctx.vars.restore_point_id} ({ctx.vars.consistency})")


class BackupWorkflow(Workflow[BackupArgs, BackupVars]):
    name = "backup"
    Args = BackupArgs
    Vars = BackupVars
    forward = [
        ensure_policy, ensure_protection_set, Checkpoint("ready"),
        prepare_snapshots, quiesce, Checkpoint("quiesced", undo_from="unquiesce"),
        snapshot, poll_snapshots, unquiesce, Checkpoint("snapshotted", undo_from="delete_snapshots"),
        move_data, poll_moved, Checkpoint("moved", undo_from="discard_moved"),
        record_restore_point, Checkpoint("recorded", undo_from="forget_restore_point"),
        delete_host_snapshots, apply_retention, report, Checkpoint("done"),
    ]
    undo = [forget_restore_point, discard_moved, delete_snapshots, unquiesce]

    @classmethod
    def resources(cls, args: BackupArgs) -> Resources:
        return Resources(target=args.repository_id, exclusive=(f"pset:{args.protection_set_id}",))
