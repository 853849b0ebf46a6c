"""Operations: provision, access, backup, restore, recover (each answered at once with 202 and an operation id), then
status, list, cancel, logs and diagnostics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from frieze.api import schemas as S
from frieze.api.deps import Admin, Coord, Operator, ReadOnly

router = APIRouter(prefix="/v1/operations", tags=["operations"])


@router.post("/backup", status_code=202, response_model=S.OperationAccepted, dependencies=[Operator])
def backup(body: S.BackupRequest, coord: Coord) -> dict[str, Any]:
    return coord.submit_backup(body.protection_set, body.policy, body.repository, body.consistency)


@router.post("/provision", status_code=202, response_model=S.ProvisionAccepted, dependencies=[Admin],
             summary="Provision a batch of hosts, volumes, repositories, apps, protection sets and policies")
def provision(body: S.ProvisionRequest, coord: Coord) -> dict[str, Any]:
    from frieze.api.routers.resources import provision_batch

    return coord.submit_provision(provision_batch(body))


@router.post("/access", status_code=202, response_model=S.OperationAccepted, dependencies=[Operator],
             summary="Pack chosen paths of a restore point into a tar archive to download from the coordinator")
def access(body: S.AccessRequest, coord: Coord) -> dict[str, Any]:
    return coord.submit_access(body.restore_point, body.volume, body.paths, body.ttl_s)


@router.post("/restore", status_code=202, response_model=S.OperationAccepted, dependencies=[Operator])
def restore(body: S.RestoreRequest, coord: Coord) -> dict[str, Any]:
    return coord.submit_restore(body.restore_point, body.volume, body.target_host, body.target_path, body.paths,
                                body.overwrite)


@router.post("/recover", status_code=202, response_model=S.OperationAccepted, dependencies=[Operator])
def recover(body: S.RecoverRequest, coord: Coord) -> dict[str, Any]:
    return coord.submit_recover(body.app, body.host, body.target.time, body.target.position, body.target.name)


@router.get("", response_model=list[S.Operation], dependencies=[ReadOnly])
def list_operations(coord: Coord, state: str | None = Query(default=None, max_length=20),
                    type: str | None = Query(default=None, max_length=50),
                    limit: int = Query(default=100, ge=1, le=1000)) -> list[dict[str, Any]]:
    return coord.list_operations(state, type, limit)


@router.get("/{op_id}", response_model=S.Operation, dependencies=[ReadOnly])
def get_operation(op_id: str, coord: Coord) -> dict[str, Any]:
    return coord.operation_status(op_id)


@router.post("/{op_id}/cancel", status_code=202, response_model=S.OperationAccepted, dependencies=[Operator])
def cancel(op_id: str, coord: Coord) -> dict[str, Any]:
    return coord.cancel_operation(op_id)


@router.get("/{op_id}/logs", response_model=list[S.LogLineOut], dependencies=[ReadOnly])
def logs(op_id: str, coord: Coord, since: int = Query(default=0, ge=0, le=2**62)) -> list[dict[str, Any]]:
    return coord.operation_logs(op_id, since)


@router.get("/{op_id}/diagnostics", dependencies=[ReadOnly],
            responses={200: {"content": {"application/gzip": {}}, "description": "the diagnostic bundle"}})
def diagnostics(op_id: str, coord: Coord) -> Response:
    data = coord.operation_diagnostics(op_id)
    return Response(content=data, media_type="application/gzip",
                    headers={"Content-Disposition": f'attachment; filename="{op_id}-diagnostics.tar.gz"'})
