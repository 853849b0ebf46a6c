"""Provisioning: hosts, volumes, apps, repositories, protection sets, policies (the catalog's writers).

Every function validates all its input before it changes anything, so a bad request changes nothing.
References accept an id or a unique name. Results are plain dicts (the API's response models mirror them);
no dict ever carries a secret value.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from frieze.coordinator.catalog.db import Catalog
from frieze.coordinator.catalog.models import (
    App,
    Base,
    EnrollmentToken,
    Host,
    Policy,
    ProtectionSet,
    Repository,
    RestorePoint,
    Volume,
)
from frieze.coordinator.policies import (
    CONSISTENCY,
    ON_QUIESCE_FAILURE,
    check_cron,
    check_retention,
    check_timezone,
    next_runs,
)
from frieze.core.clock import iso, now
from frieze.core.errors import AlreadyExists, NotFound, UsageError
from frieze.core.ids import new_id

M = TypeVar("M", bound=Base)

APP_KINDS = ("postgres", "mariadb", "sqlite", "redis", "files", "script")
PROVIDERS = ("btrfs", "reflink", "copy", "helper")


def _t(v: Any) -> Any:
    return iso(v) if v is not None and hasattr(v, "astimezone") else v


def resolve(s: Session, model: type[M], ref: str, what: str, **scope: str) -> M:
    """The row of ``model`` whose id or name is ``ref`` (within ``scope`` columns); NotFound otherwise."""
    row = s.get(model, ref)
    if row is not None and all(getattr(row, k) == v for k, v in scope.items()):
        return row
    q = select(model).where(model.name == ref)  # type: ignore[attr-defined]
    for k, v in scope.items():
        q = q.where(getattr(model, k) == v)
    rows = list(s.scalars(q))
    if len(rows) == 1:
        return rows[0]
    if len(rows) > 1:
        raise UsageError(f"{what} name {ref!r} is ambiguous; use its id", ref=ref)
    raise NotFound(f"{what} {ref!r} does not exist", ref=ref, kind=what)


def _name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "/" in name:
        raise UsageError(f"{what} name {name!r} must be 1-200 characters without '/'", name=name)
    return name


def _abs(path: str, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path or len(path) > 1000:
        raise UsageError(f"{what} {path!r} must be an absolute path", path=path)
    return path


def _limit(v: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1000:
        raise UsageError(f"{what} must be an integer from 1 to 1000, not {v!r}", limit=what)
    return v


def check_volume(name: str, path: str, provider: str) -> None:
    _name(name, "volume")
    _abs(path, "volume path")
    if provider not in PROVIDERS:
        raise UsageError(f"unknown snapshot provider {provider!r}; one of {', '.join(PROVIDERS)}", provider=provider)


def check_app(name: str, kind: str, data_dir: str) -> None:
    _name(name, "app")
    _abs(data_dir, "app data directory")
    if kind not in APP_KINDS:
        raise UsageError(f"unknown app kind {kind!r}; one of {', '.join(APP_KINDS)}", kind=kind)


def check_inside(data_dir: str, vol_name: str, vol_path: str) -> None:
    if not (data_dir == vol_path or data_dir.startswith(vol_path.rstrip("/") + "/")):
        raise UsageError(f"app data directory {data_dir!r} is not inside volume {vol_name!r} ({vol_path})",
                         data_dir=data_dir, volume=vol_name)


def check_policy(name: str, cron: str | None, timezone: str, consistency: str, on_quiesce_failure: str,
                 lease_s: float, retention: dict[str, Any], max_per_host: int | None,
                 max_per_repository: int | None) -> None:
    _name(name, "policy")
    for v, what in ((max_per_host, "max_per_host"), (max_per_repository, "max_per_repository")):
        if v is not None:
            _limit(v, what)
    if cron is not None:
        check_cron(cron)
    check_timezone(timezone)
    if consistency not in CONSISTENCY:
        raise UsageError(f"consistency must be one of {', '.join(CONSISTENCY)}, not {consistency!r}")
    if on_quiesce_failure not in ON_QUIESCE_FAILURE:
        raise UsageError(f"on_quiesce_failure must be one of {', '.join(ON_QUIESCE_FAILURE)}")
    if not 0 < lease_s <= 3600:
        raise UsageError(f"lease_s must be in (0, 3600], not {lease_s}", lease_s=lease_s)
    check_retention(retention)


# -- views --------------------------------------------------------------------------------------------
def host_view(h: Host) -> dict[str, Any]:
    return {"id": h.id, "name": h.name, "address": h.address, "state": h.state, "agent_version": h.agent_version,
            "last_heartbeat": _t(h.last_heartbeat), "maintenance": h.maintenance,
            "max_concurrent": h.max_concurrent, "created_at": _t(h.created_at)}


def volume_view(v: Volume) -> dict[str, Any]:
    return {"id": v.id, "host_id": v.host_id, "name": v.name, "path": v.path, "provider": v.provider,
            "created_at": _t(v.created_at)}


def app_view(a: App) -> dict[str, Any]:
    return {"id": a.id, "host_id": a.host_id, "volume_id": a.volume_id, "name": a.name, "kind": a.kind,
            "data_dir": a.data_dir, "options": a.options, "secrets": sorted(a.secret_refs),
            "created_at": _t(a.created_at)}


def repository_view(r: Repository) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "url": r.url, "secrets": sorted(["password", *r.secret_refs]),
            "max_concurrent": r.max_concurrent, "created_at": _t(r.created_at)}


def pset_view(p: ProtectionSet) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "app_ids": p.app_ids, "volume_ids": p.volume_ids,
            "created_at": _t(p.created_at)}


def policy_view(p: Policy) -> dict[str, Any]:
    nxt = [iso(t) for t in next_runs(p.cron, p.timezone, now(), 3)] if p.cron else []
    return {"id": p.id, "name": p.name, "protection_set_id": p.protection_set_id, "repository_id": p.repository_id,
            "cron": p.cron, "timezone": p.timezone, "consistency": p.consistency,
            "on_quiesce_failure": p.on_quiesce_failure, "lease_s": p.lease_s, "retention": p.retention,
            "keep_host_snapshots": p.keep_host_snapshots, "enabled": p.enabled, "next_runs": nxt,
            "max_per_host": p.max_per_host, "max_per_repository": p.max_per_repository,
            "created_at": _t(p.created_at)}


def restore_point_view(r: RestorePoint) -> dict[str, Any]:
    return {"id": r.id, "operation_id": r.operation_id, "protection_set_id": r.protection_set_id,
            "repository_id": r.repository_id, "policy_id": r.policy_id, "consistency": r.consistency,
            "label": r.label, "volumes": r.volumes, "freeze_epoch": r.freeze_epoch, "bytes_total": r.bytes_total,
            "bytes_new": r.bytes_new, "created_at": _t(r.created_at)}


class Resources:
    """The provisioning service over the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _add(self, s: Session, row: Base, what: str, name: str) -> None:
        s.add(row)
        try:
            s.flush()
        except SAIntegrityError as e:
            raise AlreadyExists(f"{what} {name!r} already exists", name=name, kind=what) from e

    # -- hosts ----------------------------------------------------------------------------------------
    def create_host(self, name: str, address: str | None, enrollment_token_hash: str | None,
                    token_ttl_s: float = 3600.0, max_concurrent: int = 2, *, id: str | None = None) -> dict[str, Any]:
        _name(name, "host")
        _limit(max_concurrent, "max_concurrent")
        with self.catalog.session() as s:
            h = Host(id=id or new_id("host"), name=name, address=address, state="pending",
                     max_concurrent=max_concurrent)
            self._add(s, h, "host", name)
            if enrollment_token_hash:
                s.add(EnrollmentToken(id=new_id("enr"), host_id=h.id, token_hash=enrollment_token_hash,
                                      expires_at=now() + timedelta(seconds=token_ttl_s)))
            return host_view(h)

    def list_hosts(self) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            return [host_view(h) for h in s.scalars(select(Host).order_by(Host.name))]

    def get_host(self, ref: str) -> dict[str, Any]:
        with self.catalog.session() as s:
            return host_view(resolve(s, Host, ref, "host"))

    def set_host_limit(self, ref: str, max_concurrent: int) -> dict[str, Any]:
        """How many backups may touch the host at once (admission, coordinator.limits)."""
        _limit(max_concurrent, "max_concurrent")
        with self.catalog.session() as s:
            h = resolve(s, Host, ref, "host")
            h.max_concurrent = max_concurrent
            return host_view(h)

    def set_maintenance(self, ref: str, on: bool) -> dict[str, Any]:
        with self.catalog.session() as s:
            h = resolve(s, Host, ref, "host")
            h.maintenance = on
            if on:
                h.state = "maintenance"
            elif h.state == "maintenance":
                h.state = "offline"
            return host_view(h)

    # -- volumes --------------------------------------------------------------------------------------
    def create_volume(self, host: str, name: str, path: str, provider: str, *, id: str | None = None) -> dict[str, Any]:
        check_volume(name, path, provider)
        with self.catalog.session() as s:
            h = resolve(s, Host, host, "host")
            v = Volume(id=id or new_id("vol"), host_id=h.id, name=name, path=path, provider=provider)
            self._add(s, v, "volume", name)
            return volume_view(v)

    def list_volumes(self) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            return [volume_view(v) for v in s.scalars(select(Volume).order_by(Volume.name))]

    # -- apps -----------------------------------------------------------------------------------------
    def create_app(self, host: str, name: str, kind: str, data_dir: str, volume: str | None,
                   options: dict[str, Any], secret_names: list[str], *, id: str | None = None) -> dict[str, Any]:
        """Register an app. ``secret_names`` are the keys whose values the caller stores in the vault
        under ``app/<id>/<key>`` (see :meth:`app_secret_name`)."""
        check_app(name, kind, data_dir)
        with self.catalog.session() as s:
            h = resolve(s, Host, host, "host")
            vol_id = None
            if volume is not None:
                vol = resolve(s, Volume, volume, "volume", host_id=h.id)
                check_inside(data_dir, vol.name, vol.path)
                vol_id = vol.id
            aid = id or new_id("app")
            a = App(id=aid, host_id=h.id, volume_id=vol_id, name=name, kind=kind, data_dir=data_dir,
                    options=options, secret_refs={k: self.app_secret_name(aid, k) for k in secret_names})
            self._add(s, a, "app", name)
            return app_view(a)

    @staticmethod
    def app_secret_name(app_id: str, key: str) -> str:
        return f"app/{app_id}/{key}"

    def get_app(self, ref: str) -> dict[str, Any]:
        with self.catalog.session() as s:
            return app_view(resolve(s, App, ref, "app"))

    def list_apps(self) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            return [app_view(a) for a in s.scalars(select(App).order_by(App.name))]

    # -- repositories ---------------------------------------------------------------------------------
    def create_repository(self, name: str, url: str, secret_keys: list[str], max_concurrent: int = 2, *,
                          id: str | None = None) -> dict[str, Any]:
        _name(name, "repository")
        _limit(max_concurrent, "max_concurrent")
        rid = id or new_id("repo")
        with self.catalog.session() as s:
            r = Repository(id=rid, name=name, url=url, password_ref=f"repo/{rid}/password",
                           secret_refs={k: f"repo/{rid}/{k}" for k in secret_keys}, max_concurrent=max_concurrent)
            self._add(s, r, "repository", name)
            return repository_view(r)

    def set_repository_limit(self, ref: str, max_concurrent: int) -> dict[str, Any]:
        """How many backups may write the repository at once (admission, coordinator.limits)."""
        _limit(max_concurrent, "max_concurrent")
        with self.catalog.session() as s:
            r = resolve(s, Repository, ref, "repository")
            r.max_concurrent = max_concurrent
            return repository_view(r)

    def list_repositories(self) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            return [repository_view(r) for r in s.scalars(select(Repository).order_by(Repository.name))]

    def get_repository(self, ref: str) -> dict[str, Any]:
        with self.catalog.session() as s:
            return repository_view(resolve(s, Repository, ref, "repository"))

    def check_repository_name_free(self, name: str) -> None:
        with self.catalog.session() as s:
            if s.scalar(select(Repository.id).where(Repository.name == name)) is not None:
                raise AlreadyExists(f"repository {name!r} already exists", name=name, kind="repository")

    # -- protection sets ------------------------------------------------------------------------------
    def create_protection_set(self, name: str, apps: list[str], volumes: list[str], *,
                              id: str | None = None) -> dict[str, Any]:
        _name(name, "protection set")
        if not apps and not volumes:
            raise UsageError(f"protection set {name!r} needs at least one app or volume", name=name)
        with self.catalog.session() as s:
            app_rows = [resolve(s, App, a, "app") for a in apps]
            vol_ids = [resolve(s, Volume, v, "volume").id for v in volumes]
            for a in app_rows:
                if a.volume_id is None:
                    raise UsageError(f"app {a.name!r} has no volume; register one for it first", app=a.name)
                if a.volume_id not in vol_ids:
                    vol_ids.append(a.volume_id)
            p = ProtectionSet(id=id or new_id("pset"), name=name, app_ids=[a.id for a in app_rows], volume_ids=vol_ids)
            self._add(s, p, "protection set", name)
            return pset_view(p)

    def list_protection_sets(self) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            return [pset_view(p) for p in s.scalars(select(ProtectionSet).order_by(ProtectionSet.name))]

    # -- policies -------------------------------------------------------------------------------------
    def create_policy(self, name: str, protection_set: str, repository: str, cron: str | None, timezone: str,
                      consistency: str, on_quiesce_failure: str, lease_s: float, retention: dict[str, Any],
                      keep_host_snapshots: int, max_per_host: int | None = None,
                      max_per_repository: int | None = None, *, id: str | None = None) -> dict[str, Any]:
        check_policy(name, cron, timezone, consistency, on_quiesce_failure, lease_s, retention, max_per_host,
                     max_per_repository)
        with self.catalog.session() as s:
            ps = resolve(s, ProtectionSet, protection_set, "protection set")
            repo = resolve(s, Repository, repository, "repository")
            p = Policy(id=id or new_id("pol"), name=name, protection_set_id=ps.id, repository_id=repo.id, cron=cron,
                       timezone=timezone, consistency=consistency, on_quiesce_failure=on_quiesce_failure,
                       lease_s=lease_s, retention=retention, keep_host_snapshots=keep_host_snapshots,
                       max_per_host=max_per_host, max_per_repository=max_per_repository)
            self._add(s, p, "policy", name)
            return policy_view(p)

    def list_policies(self) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            return [policy_view(p) for p in s.scalars(select(Policy).order_by(Policy.name))]

    def get_policy(self, ref: str) -> dict[str, Any]:
        with self.catalog.session() as s:
            return policy_view(resolve(s, Policy, ref, "policy"))

    # -- removal (the undo of provisioning) --------------------------------------------------------
    def delete(self, model: type[Base], row_id: str) -> bool:
        """Delete the row ``row_id`` of ``model`` if it exists (a host with its enrollment tokens). A row that
        something still references is refused by the catalog's foreign keys (IntegrityError) and kept."""
        with self.catalog.session() as s:
            row = s.get(model, row_id)
            if row is None:
                return False
            if model is Host:
                for t in s.scalars(select(EnrollmentToken).where(EnrollmentToken.host_id == row_id)):
                    s.delete(t)
            s.delete(row)
            return True

    # -- restore points -------------------------------------------------------------------------------
    def list_restore_points(self, protection_set: str | None = None) -> list[dict[str, Any]]:
        with self.catalog.session() as s:
            q = select(RestorePoint).where(RestorePoint.forgotten.is_(False)).order_by(RestorePoint.created_at)
            if protection_set:
                q = q.where(RestorePoint.protection_set_id == resolve(s, ProtectionSet, protection_set,
                                                                        "protection set").id)
            return [restore_point_view(r) for r in s.scalars(q)]

    def get_restore_point(self, rid: str) -> dict[str, Any]:
        with self.catalog.session() as s:
            r = s.get(RestorePoint, rid)
            if r is None or r.forgotten:
                raise NotFound(f"restore point {rid!r} does not exist", restore_point=rid)
            return restore_point_view(r)
