"""The restore workflow: a restore point's volume (whole, or chosen paths) to its original place or to
another host and path, through that host's agent.

    check_target                                  ⟶ checkpoint "checked"  (nothing to undo)
    fetch (repository → coordinator staging)      ⟶ checkpoint "fetched"  (undo: clean_staging)
    send (staging → agent, each file digest-checked by the agent)
                                                  ⟶ checkpoint "sent"     (undo: remove_partial…)
    verify → finish                               ⟶ checkpoint "done"

Restore never writes into an existing, non-empty target (in particular a running app's data) unless the
request says ``overwrite``; a target that did not exist before and was partly written is removed by undo.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from frieze.coordinator.mover import clean
from frieze.coordinator.workflows import common as C
from frieze.core.clock import iso, now
from frieze.core.errors import AlreadyExists, IntegrityError
from frieze.engine import Checkpoint, Resources, TaskContext, Workflow, task


class RestoreArgs(BaseModel):
    restore_point_id: str
    volume_id: str
    target_host_id: str
    target_path: str
    paths: list[str] = Field(default_factory=list)
    overwrite: bool = False


class RestoreVars(BaseModel):
    repo_snapshot: str = ""
    repository_id: str = ""
    target_existed: bool = True
    files: int = 0
    bytes: int = 0
    digests: dict[str, str] = Field(default_factory=dict)


Ctx = TaskContext[RestoreArgs, RestoreVars]


@task
def check_target(ctx: Ctx) -> None:
    """The restore point exists; the target is absent or empty (or overwrite was asked for)."""
    c = C.coord()
    ctx.vars.repository_id, ctx.vars.repo_snapshot, _vol = c.restore_point_volume(ctx.args.restore_point_id,
                                                                                  ctx.args.volume_id)
    st = C.agent(ctx.args.target_host_id).target_state(ctx.args.target_path)
    ctx.vars.target_existed = bool(st.get("exists"))
    if st.get("exists") and not st.get("empty") and not ctx.args.overwrite:
        raise AlreadyExists(f"restore target {ctx.args.target_path} exists and is not empty; choose another "
                            "path or pass overwrite", path=ctx.args.target_path)
    if not ctx.args.overwrite:  # never over (or into) the data of a running app without the flag
        c.refuse_running_app(ctx.args.target_host_id, ctx.args.target_path, strict=True)
    ctx.log(f"target {ctx.args.target_path} is {'empty' if st.get('exists') else 'absent'}")


@task
def fetch(ctx: Ctx) -> None:
    """Restore the repository snapshot (or the chosen paths) into a fresh staging directory."""
    from frieze.repo.restore import restore as repo_restore

    c = C.coord()
    stage = c.mover.restore_dir(ctx.op_id)
    clean(stage)
    stage.mkdir(parents=True)
    with c.repos.open(ctx.vars.repository_id) as repo:
        kwargs: dict[str, Any] = {}
        if ctx.args.paths:
            kwargs["paths"] = list(ctx.args.paths)
        repo_restore(repo, ctx.vars.repo_snapshot, str(stage), **kwargs)
    ctx.log(f"restored repository snapshot {ctx.vars.repo_snapshot[:12]} to staging")


@task
def clean_staging(ctx: Ctx) -> None:
    clean(C.coord().mover.restore_dir(ctx.op_id))


@task
def send(ctx: Ctx) -> None:
    """Send the staged files to the target host's agent, which writes them under the target only."""
    c = C.coord()
    stage = c.mover.restore_dir(ctx.op_id)
    sink = C.agent(ctx.args.target_host_id).sink(ctx.args.target_path, overwrite=ctx.args.overwrite)
    files, nbytes = c.mover.send(stage, sink, cancelled=ctx.cancel_requested,
                                 progress=lambda d, t: ctx.progress(bytes_done=d, bytes_total=t))
    finish = getattr(sink, "finish", None)
    if finish is not None:
        finish()
    ctx.vars.files, ctx.vars.bytes = files, nbytes
    ctx.vars.digests = {e.path: e.digest or "" for e, _p in c.mover.extract_entries(stage) if e.type == "file"}
    ctx.log(f"sent {files} files, {nbytes} bytes to {ctx.args.target_path}")


@task
def remove_partial(ctx: Ctx) -> None:
    """Undo: remove a target this restore created (never one that existed before)."""
    if not ctx.vars.target_existed:
        agent = C.agent(ctx.args.target_host_id)
        if not agent.target_state(ctx.args.target_path).get("exists"):
            ctx.log(f"restore target {ctx.args.target_path} was not created; nothing to remove")
            return
        agent.remove_target(ctx.args.target_path)
        ctx.log(f"removed partial restore target {ctx.args.target_path}")


@task
def verify(ctx: Ctx) -> None:
    """Read the target's listing back through the agent and compare every file's digest."""
    verify_fn = getattr(C.agent(ctx.args.target_host_id), "target_digests", None)
    if verify_fn is None:
        ctx.log("the agent checked each file's digest as it wrote it")
        return
    have: dict[str, str] = verify_fn(ctx.args.target_path)
    bad = [p for p, d in ctx.vars.digests.items() if have.get(p) != d]
    if bad:
        raise IntegrityError(f"{len(bad)} restored file(s) differ from the restore point, e.g. {bad[0]!r}",
                             files=bad[:20])
    ctx.log(f"verified {len(ctx.vars.digests)} files against the restore point")


@task
def finish(ctx: Ctx) -> None:
    c = C.coord()
    clean(c.mover.restore_dir(ctx.op_id))
    c.record_result(ctx.op_id, {"restore_point_id": ctx.args.restore_point_id, "target_path": ctx.args.target_path,
                                "target_host_id": ctx.args.target_host_id, "files": ctx.vars.files,
                                "bytes": ctx.vars.bytes, "finished_at": iso(now())})


class RestoreWorkflow(Workflow[RestoreArgs, RestoreVars]):
    name = "restore"
    Args = RestoreArgs
    Vars = RestoreVars
    forward = [
        check_target, Checkpoint("checked"),
        fetch, Checkpoint("fetched", undo_from="clean_staging"),
        send, Checkpoint("sent", undo_from="remove_partial"),
        verify, finish, Checkpoint("done"),
    ]
    undo = [remove_partial, clean_staging]

    @classmethod
    def resources(cls, args: RestoreArgs) -> Resources:
        return Resources(host=args.target_host_id, exclusive=(f"path:{args.target_host_id}:{args.target_path}",))
