"""Provisioning: hosts, volumes, apps, repositories, protection sets, policies, restore points."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, status
from fastapi.responses import FileResponse, StreamingResponse

from frieze.api import schemas as S
from frieze.api.deps import Admin, Coord, Operator, ReadOnly

RelPath = Query(default="", max_length=4096, pattern=r"^[^\x00]*$", description="path relative to the volume")

router = APIRouter(prefix="/v1")


@router.post("/hosts", status_code=status.HTTP_201_CREATED, response_model=S.HostCreated, dependencies=[Admin],
             tags=["hosts"], summary="Register a host; returns its one-time enrollment token")
def create_host(body: S.HostCreate, coord: Coord) -> dict[str, Any]:
    host, token = coord.create_host(body.name, body.address, body.max_concurrent)
    return {"host": host, "enrollment_token": token}


@router.post("/hosts/{host}/enrollment-token", status_code=201, response_model=S.HostCreated, dependencies=[Admin],
             tags=["hosts"], summary="Issue a new one-time enrollment token for a registered host")
def new_enrollment_token(host: str, body: S.EnrollmentTokenCreate, coord: Coord) -> dict[str, Any]:
    view, token = coord.new_enrollment_token(host, body.ttl_s)
    return {"host": view, "enrollment_token": token}


@router.get("/hosts", response_model=list[S.Host], dependencies=[ReadOnly], tags=["hosts"])
def list_hosts(coord: Coord) -> list[dict[str, Any]]:
    return coord.resources.list_hosts()


@router.get("/hosts/{host}", response_model=S.Host, dependencies=[ReadOnly], tags=["hosts"])
def get_host(host: str, coord: Coord) -> dict[str, Any]:
    return coord.resources.get_host(host)


@router.put("/hosts/{host}/limits", response_model=S.Host, dependencies=[Admin], tags=["hosts"],
            summary="How many backups may touch the host at once")
def set_host_limits(host: str, body: S.LimitSet, coord: Coord) -> dict[str, Any]:
    return coord.resources.set_host_limit(host, body.max_concurrent)


@router.put("/hosts/{host}/maintenance", response_model=S.Host, dependencies=[Operator], tags=["hosts"])
def set_maintenance(host: str, body: S.MaintenanceSet, coord: Coord) -> dict[str, Any]:
    return coord.resources.set_maintenance(host, body.maintenance)


@router.post("/volumes", status_code=201, response_model=S.Volume, dependencies=[Admin], tags=["volumes"])
def create_volume(body: S.VolumeCreate, coord: Coord) -> dict[str, Any]:
    return coord.resources.create_volume(body.host, body.name, body.path, body.provider)


@router.get("/volumes", response_model=list[S.Volume], dependencies=[ReadOnly], tags=["volumes"])
def list_volumes(coord: Coord) -> list[dict[str, Any]]:
    return coord.resources.list_volumes()


@router.post("/apps", status_code=201, response_model=S.App, dependencies=[Admin], tags=["apps"])
def create_app(body: S.AppCreate, coord: Coord) -> dict[str, Any]:
    return coord.create_app(body.host, body.name, body.kind, body.data_dir, body.volume, dict(body.options),
                            {k: v.get_secret_value() for k, v in body.secrets.items()})


@router.get("/apps", response_model=list[S.App], dependencies=[ReadOnly], tags=["apps"])
def list_apps(coord: Coord) -> list[dict[str, Any]]:
    return coord.resources.list_apps()


@router.put("/apps/{app}/secrets", response_model=S.App, dependencies=[Admin], tags=["apps"],
            summary="Rotate an app's secrets (e.g. its database password), checked through its agent first")
def set_app_secrets(app: str, body: S.AppSecretsSet, coord: Coord) -> dict[str, Any]:
    return coord.set_app_secrets(app, body.host, {k: v.get_secret_value() for k, v in body.secrets.items()},
                                 body.verify)


@router.post("/repositories", status_code=201, response_model=S.Repository, dependencies=[Admin],
             tags=["repositories"], summary="Register (and optionally create) a repository the coordinator writes")
def create_repository(body: S.RepositoryCreate, coord: Coord) -> dict[str, Any]:
    s3 = {}
    if body.s3_access_key_id is not None:
        s3["access_key_id"] = body.s3_access_key_id.get_secret_value()
    if body.s3_secret_access_key is not None:
        s3["secret_access_key"] = body.s3_secret_access_key.get_secret_value()
    return coord.create_repository(body.name, body.url, body.password.get_secret_value(), body.init, s3,
                                   body.max_concurrent)


@router.get("/repositories", response_model=list[S.Repository], dependencies=[ReadOnly], tags=["repositories"])
def list_repositories(coord: Coord) -> list[dict[str, Any]]:
    return coord.resources.list_repositories()


@router.put("/repositories/{repository}/password", response_model=S.RepositoryRotated, dependencies=[Admin],
            tags=["repositories"], summary="Rotate the repository password through its key slots (no downtime)")
def rotate_repository_password(repository: str, body: S.PasswordSet, coord: Coord) -> dict[str, Any]:
    return coord.rotate_repository_password(repository, body.password.get_secret_value())


@router.put("/repositories/{repository}/s3-keys", response_model=S.RepositoryRotated, dependencies=[Admin],
            tags=["repositories"], summary="Rotate the repository's S3 keys (the new ones must open it first)")
def rotate_repository_s3(repository: str, body: S.S3KeysSet, coord: Coord) -> dict[str, Any]:
    return coord.rotate_repository_s3(repository, {"access_key_id": body.access_key_id.get_secret_value(),
                                                   "secret_access_key": body.secret_access_key.get_secret_value()})


@router.put("/repositories/{repository}/limits", response_model=S.Repository, dependencies=[Admin],
            tags=["repositories"], summary="How many backups may write the repository at once")
def set_repository_limits(repository: str, body: S.LimitSet, coord: Coord) -> dict[str, Any]:
    return coord.resources.set_repository_limit(repository, body.max_concurrent)


@router.post("/protection-sets", status_code=201, response_model=S.ProtectionSet, dependencies=[Admin],
             tags=["protection sets"])
def create_protection_set(body: S.ProtectionSetCreate, coord: Coord) -> dict[str, Any]:
    return coord.resources.create_protection_set(body.name, body.apps, body.volumes)


@router.get("/protection-sets", response_model=list[S.ProtectionSet], dependencies=[ReadOnly],
            tags=["protection sets"])
def list_protection_sets(coord: Coord) -> list[dict[str, Any]]:
    return coord.resources.list_protection_sets()


@router.post("/policies", status_code=201, response_model=S.Policy, dependencies=[Admin], tags=["policies"])
def create_policy(body: S.PolicyCreate, coord: Coord) -> dict[str, Any]:
    return coord.create_policy(body.name, body.protection_set, body.repository, body.cron, body.timezone,
                               body.consistency, body.on_quiesce_failure, body.lease_s, dict(body.retention),
                               body.keep_host_snapshots, max_per_host=body.max_per_host,
                               max_per_repository=body.max_per_repository)


@router.get("/policies", response_model=list[S.Policy], dependencies=[ReadOnly], tags=["policies"])
def list_policies(coord: Coord) -> list[dict[str, Any]]:
    return coord.resources.list_policies()


@router.get("/policies/{policy}", response_model=S.Policy, dependencies=[ReadOnly], tags=["policies"])
def get_policy(policy: str, coord: Coord) -> dict[str, Any]:
    return coord.resources.get_policy(policy)


def provision_batch(body: S.ProvisionRequest) -> dict[str, list[dict[str, Any]]]:
    """The request as the coordinator's provisioner takes it: plain dicts, secret values revealed."""
    batch: dict[str, list[dict[str, Any]]] = {}
    for kind in ("hosts", "volumes", "protection_sets", "policies"):
        batch[kind] = [m.model_dump() for m in getattr(body, kind)]
    batch["apps"] = [{**a.model_dump(exclude={"secrets"}),
                      "secrets": {k: v.get_secret_value() for k, v in a.secrets.items()}} for a in body.apps]
    batch["repositories"] = [
        {**r.model_dump(exclude={"password", "s3_access_key_id", "s3_secret_access_key"}),
         "password": r.password.get_secret_value(),
         **({"access_key_id": r.s3_access_key_id.get_secret_value()} if r.s3_access_key_id else {}),
         **({"secret_access_key": r.s3_secret_access_key.get_secret_value()} if r.s3_secret_access_key else {})}
        for r in body.repositories]
    return batch


@router.post("/provision/plan", response_model=list[S.ProvisionPlanItem], dependencies=[Admin], tags=["provision"],
             summary="What a provision of this batch would create or leave unchanged (changes nothing)")
def plan_provision(body: S.ProvisionRequest, coord: Coord) -> list[dict[str, Any]]:
    return coord.plan_provision(provision_batch(body))


@router.get("/restore-points", response_model=list[S.RestorePoint], dependencies=[ReadOnly],
            tags=["restore points"])
def list_restore_points(coord: Coord, protection_set: str | None = None) -> list[dict[str, Any]]:
    return coord.resources.list_restore_points(protection_set)


@router.get("/restore-points/{rp}", response_model=S.RestorePoint, dependencies=[ReadOnly],
            tags=["restore points"])
def get_restore_point(rp: str, coord: Coord) -> dict[str, Any]:
    return coord.resources.get_restore_point(rp)


@router.get("/restore-points/{rp}/files", response_model=list[S.FileInfo], dependencies=[ReadOnly],
            tags=["restore points"], summary="Browse a restore point (access through the coordinator)")
def list_files(rp: str, coord: Coord, path: str = RelPath,
               volume: str | None = Query(default=None, max_length=200), recursive: bool = False
               ) -> list[dict[str, Any]]:
    return coord.list_files(rp, volume, path, recursive)


@router.get("/restore-points/{rp}/content", dependencies=[Operator], tags=["restore points"],
            summary="Read one file of a restore point (authenticated by the repository before it is sent)",
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the file's bytes"}})
def read_content(rp: str, coord: Coord, path: str = RelPath,
                 volume: str | None = Query(default=None, max_length=200)) -> StreamingResponse:
    size, chunks = coord.read_file(rp, volume, path)
    return StreamingResponse(chunks, media_type="application/octet-stream",
                             headers={"Content-Length": str(size)})


@router.get("/access/{op_id}/archive", dependencies=[Operator], tags=["restore points"],
            summary="Download the tar archive an access operation made (until it expires)",
            responses={200: {"content": {"application/x-tar": {}}, "description": "the archive"}})
def access_archive(op_id: str, coord: Coord) -> FileResponse:
    path = coord.access_archive(op_id)
    return FileResponse(path, media_type="application/x-tar", filename=f"{op_id}.tar")
