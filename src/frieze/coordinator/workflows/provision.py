"""The provision workflow: apply a planned batch (coordinator.provision), one step per kind, each undone by
deleting exactly the rows this operation created (never one that existed before), in the reverse order.

    create_hosts → create_volumes → create_repositories → create_apps → create_protection_sets
    → create_policies → finish   ⟶ checkpoint "done"

A repository step opens (or creates, with ``init``) the repository before its row is recorded; its undo
removes the row and the sealed secrets and leaves the storage in place (an initialised repository holds no
snapshot then; a later provision with ``init`` opens it with the same password). The pending secrets are
deleted by ``finish`` or by the undo.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from frieze.coordinator.provision import KINDS, SINGULAR
from frieze.coordinator.workflows import common as C
from frieze.core.clock import iso, now
from frieze.engine import Checkpoint, Resources, Task, TaskContext, Workflow, task


class ProvisionArgs(BaseModel):
    provision_id: str
    #: PlanItem.args() of every item (no secret value: only the names they are sealed under)
    items: list[dict[str, Any]]


class ProvisionVars(BaseModel):
    created: list[str] = []


Ctx = TaskContext[ProvisionArgs, ProvisionVars]


def _mine(ctx: Ctx, kind: str) -> list[dict[str, Any]]:
    return [it for it in ctx.args.items if it["kind"] == kind and it["action"] == "create"]


def _creator(kind: str) -> Task:
    def run(ctx: Ctx) -> None:
        p = C.coord().provisioner
        for it in _mine(ctx, kind):
            made = p.create(it)
            if it["id"] not in ctx.vars.created:
                ctx.vars.created.append(it["id"])
            ctx.log(f"{SINGULAR[kind]} {it['name']} ({it['id']}) " + ("created" if made else "was already created"))
    return task(name=f"create_{kind}")(run)


def _remover(kind: str) -> Task:
    def run(ctx: Ctx) -> None:
        p = C.coord().provisioner
        for it in reversed(_mine(ctx, kind)):
            if p.delete(it):
                ctx.log(f"{SINGULAR[kind]} {it['name']} ({it['id']}) removed")
    return task(name=f"delete_{kind}")(run)


@task
def finish(ctx: Ctx) -> None:
    p = C.coord().provisioner
    created: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    unchanged: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for it in ctx.args.items:
        v = p.view(it["kind"], it["id"])
        (created if it["action"] == "create" else unchanged)[it["kind"]].append(v or {"id": it["id"],
                                                                                       "name": it["name"]})
    p.drop_pending(ctx.args.items)
    counts = {"created": sum(map(len, created.values())), "unchanged": sum(map(len, unchanged.values()))}
    C.coord().record_result(ctx.op_id, {"provision_id": ctx.args.provision_id, "created": created,
                                        "unchanged": unchanged, "counts": counts, "finished_at": iso(now())})
    ctx.log(f"provisioned: {counts['created']} created, {counts['unchanged']} unchanged")


@task
def drop_pending(ctx: Ctx) -> None:
    n = C.coord().provisioner.drop_pending(ctx.args.items)
    ctx.log(f"{n} pending secrets deleted")


def _forward() -> list[Task | Checkpoint]:
    out: list[Task | Checkpoint] = []
    for k in KINDS:
        out += [_creator(k), Checkpoint(f"{k}_created", undo_from=f"delete_{k}")]
    return [*out, finish, Checkpoint("done")]


class ProvisionWorkflow(Workflow[ProvisionArgs, ProvisionVars]):
    name = "provision"
    Args = ProvisionArgs
    Vars = ProvisionVars
    forward = _forward()
    undo = [*(_remover(k) for k in reversed(KINDS)), drop_pending]

    @classmethod
    def resources(cls, args: ProvisionArgs) -> Resources:
        return Resources(exclusive=("provision",))  # one batch at a time: plans do not race each other
