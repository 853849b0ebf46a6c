"""The recover workflow: bring an application to a point in time (a time, a log position or a named
restore point) or to the end of all its logs, through its agent. The agent's plug-in does the work (and
says NotSupported for an engine that cannot); the coordinator checks the app, runs it, and reports.

    check_app → recover → finish   ⟶ checkpoint "done"
"""

from __future__ import annotations

from pydantic import BaseModel

from frieze.coordinator.workflows import common as C
from frieze.core.clock import iso, now
from frieze.engine import Checkpoint, Resources, TaskContext, Workflow, task


class RecoverArgs(BaseModel):
    app_id: str
    time: str | None = None
    position: str | None = None
    name: str | None = None


class RecoverVars(BaseModel):
    result: dict[str, object] = {}


Ctx = TaskContext[RecoverArgs, RecoverVars]


@task
def check_app(ctx: Ctx) -> None:
    ref, host = C.app(ctx.args.app_id)
    C.agent(host).app_status(ref)
    ctx.log(f"app {ref.name} ({ref.kind}) is reachable")


@task
def recover(ctx: Ctx) -> None:
    ref, host = C.app(ctx.args.app_id, with_secrets=True)
    a = ctx.args
    target = a.time or a.position or a.name or "end of all logs"
    ctx.vars.result = dict(C.agent(host).recover(ref, time=a.time, position=a.position, name=a.name))
    ctx.log(f"recovered {ref.name} to {target}")


@task
def finish(ctx: Ctx) -> None:
    C.coord().record_result(ctx.op_id, {"app_id": ctx.args.app_id, **ctx.vars.result, "finished_at": iso(now())})


class RecoverWorkflow(Workflow[RecoverArgs, RecoverVars]):
    name = "recover"
    Args = RecoverArgs
    Vars = RecoverVars
    forward = [check_app, recover, finish, Checkpoint("done")]
    undo = []

    @classmethod
    def resources(cls, args: RecoverArgs) -> Resources:
        return Resources(exclusive=(f"app:{args.app_id}",))
