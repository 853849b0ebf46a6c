"""The coordinator facade: the one object the API (and the CLI's `server run`) talks to.

It owns the catalog, the vault, tokens, the agent registry, the repositories service, the workflow engine
and the scheduler, and exposes the calls the REST API maps to. Every call that does work submits an
operation to the engine and returns its id at once; provisioning calls validate everything first and
change nothing on error.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select

from frieze.coordinator import context
from frieze.coordinator.agents import AgentDirectory
from frieze.coordinator.auth import Tokens
from frieze.coordinator.catalog.db import Catalog
from frieze.coordinator.catalog.models import (
    App,
    Counter,
    Host,
    OpResult,
    Policy,
    ProtectionSet,
    Repository,
    RestorePoint,
    ScheduleRun,
    Volume,
)
from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.metrics import HOSTS, OPS_FINISHED, OPS_SUBMITTED
from frieze.coordinator.mover import Mover
from frieze.coordinator.provision import Provisioner
from frieze.coordinator.registry import Registry
from frieze.coordinator.repos import Repos
from frieze.coordinator.resources import Resources, resolve
from frieze.coordinator.secrets_store import SecretStore
from frieze.coordinator.vault import Vault
from frieze.core.errors import AlreadyExists, Conflict, Forbidden, FriezeError, NotFound, UsageError

log = structlog.get_logger("frieze.coordinator")


def check_volume_paths(paths: list[str], what: str) -> None:
    """Each of ``paths`` must be valid text, relative to a volume, without ``..`` or NUL (UsageError)."""
    for p in paths:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{what} path {p!r} is not valid text", path=repr(p)) from None
        if p.startswith("/") or ".." in p.split("/") or "\x00" in p:
            raise UsageError(f"{what} path {p!r} must be relative to the volume, without '..'", path=p)


def app_ref_with(ref: Any, secrets: dict[str, str]) -> Any:
    """``ref`` (an AppRef) carrying ``secrets`` for one call."""
    from dataclasses import replace

    return replace(ref, secrets=secrets)


class Coordinator:
    """Everything one coordinator process runs."""

    def __init__(self, config: CoordinatorConfig, *, start_engine: bool = True) -> None:
        config.ensure_dirs()
        self.config = config
        self.catalog = Catalog(config.catalog)
        self.vault = Vault(config.key_file)
        self.secrets = SecretStore(self.catalog, self.vault)
        self.tokens = Tokens(self.catalog)
        self.resources = Resources(self.catalog)
        self.registry = Registry(self.catalog, config)
        self.repos = Repos(self.catalog, self.secrets, config)
        self.provisioner = Provisioner(self.resources, self.secrets, self.repos, config)
        self.agents = AgentDirectory(self._protocol_factory())
        self.mover = Mover(config.staging_dir)
        self._lock = threading.Lock()
        self._finished_lock = threading.Lock()
        self._counted: set[str] = set()
        self.engine: Any = None
        self.scheduler: Any = None
        if self.tokens.bootstrap(config.admin_token_file):
            log.info("bootstrap_admin_token_written", path=str(config.admin_token_file))
        context.install(self)
        if start_engine:
            self.start_engine()

    def _protocol_factory(self) -> Any:
        try:
            from frieze.coordinator.agent_client import factory
        except ImportError:  # frieze.protocol not installed
            return None
        return factory(self.config)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start_engine(self) -> None:
        from frieze.coordinator.engine_setup import make_engine

        self.engine = make_engine(self.config)
        self.engine.start()
        with self._finished_lock:  # operations final before this process: not counted again
            self._counted = {st.id for st in self.engine.list(limit=1000) if st.state.final}
        if self.config.scheduler:
            from frieze.coordinator.scheduler import Scheduler

            self.scheduler = Scheduler(self, interval_s=self.config.scheduler_interval_s,
                                       orphan_after_s=self.config.orphan_after_s)
            self.scheduler.start()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        self.registry.close()
        self.agents.close()
        self.repos.close()
        self.catalog.close()
        context.uninstall(self)

    def agent_tls(self) -> dict[str, Any] | None:
        """Paths of the agent port's server certificate, key and the agents' CA, or None when the CA
        (frieze.protocol) is not available."""
        from frieze.coordinator.ca import agent_port_tls

        return agent_port_tls(self.config)

    def upgrade_agent(self, host: Host, have: str | None, timeout_s: float = 90.0) -> str:
        """Upgrade an agent older than ``min_agent_version`` with ``agent_dist`` (checked by its SHA-256 on
        the agent), then wait until it answers with a good version. One upgrade per host at a time."""
        import hashlib
        import time

        from frieze.coordinator.registry import version_ok

        dist = self.config.agent_dist
        assert dist is not None
        with self._lock:
            data = dist.read_bytes()
            log.info("agent_upgrade", host=host.name, have=have, need=self.config.min_agent_version, dist=dist.name)
            self.agents.for_host(host).upgrade(data, hashlib.sha256(data).hexdigest(), dist.name)
            self.agents.forget(host)
            deadline = time.monotonic() + timeout_s
            v: str | None = None
            while time.monotonic() < deadline:
                try:
                    v = self.agents.for_host(host).version()
                    if version_ok(v, self.config.min_agent_version):
                        return v
                except FriezeError:
                    self.agents.forget(host)
                time.sleep(0.5)
        raise Conflict(f"agent on host {host.name!r} is still at version {v or have} after an upgrade to "
                       f"{dist.name}; it needs {self.config.min_agent_version}", host=host.name, version=v or have)

    def probe_agents(self) -> None:
        """Heartbeat every enrolled agent from here (agents need not call in)."""
        self.registry.probe(self.agents.for_host)

    def enrollment_router(self) -> Any:
        """The agents' enrollment routes (frieze.protocol.enroll) over this coordinator's CA and registry."""
        from frieze.protocol.ca import CertificateAuthority
        from frieze.protocol.enroll import enrollment_router

        ca = CertificateAuthority.create(self.config.ca_dir)
        return enrollment_router(ca, redeem=self.registry.redeem,
                                 on_issued=lambda host, fp: self.registry.set_fingerprint(host["id"], fp))

    def ca_fingerprint(self) -> str:
        from frieze.protocol.ca import CertificateAuthority

        return CertificateAuthority.create(self.config.ca_dir).fingerprint

    def count_finished(self, statuses: list[Any] | None = None, *, unowned: bool = False) -> int:
        """Count operations that finished on this coordinator in ``frieze_operations_finished_total`` once
        each (operations final before this process started are not counted). ``statuses``: the ones to look
        at (default: the 500 newest); ``unowned``: also those no coordinator ran (canceled while queued, by
        this one). Returns how many were counted now."""
        if self.engine is None:
            return 0
        sts = statuses if statuses is not None else self.engine.list(limit=500)
        n = 0
        with self._finished_lock:
            for st in sts:
                if not st.state.final or st.id in self._counted:
                    continue
                if st.executor_id != self.config.executor_id and not (unowned and st.executor_id is None):
                    continue  # another coordinator ran it and counts it
                self._counted.add(st.id)
                OPS_FINISHED.labels(st.type, st.state.value).inc()
                n += 1
            if len(self._counted) > 20000 and statuses is None:
                self._counted &= {st.id for st in sts}
        return n

    def refresh_gauges(self) -> None:
        self.count_finished()
        with self.catalog.session() as s:
            counts = {st: n for st, n in s.execute(select(Host.state, func.count()).group_by(Host.state))}
        for st in ("pending", "online", "offline", "maintenance"):
            HOSTS.labels(st).set(counts.get(st, 0))

    # -- provisioning with secrets --------------------------------------------------------------------
    def create_host(self, name: str, address: str | None, max_concurrent: int = 2) -> tuple[dict[str, Any], str]:
        return self.registry.create_host(self.resources, name, address, max_concurrent)

    def create_app(self, host: str, name: str, kind: str, data_dir: str, volume: str | None,
                   options: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
        view = self.resources.create_app(host, name, kind, data_dir, volume, options, sorted(secrets))
        for k, v in secrets.items():
            self.secrets.put(Resources.app_secret_name(view["id"], k), v)
        return view

    def set_app_secrets(self, app: str, host: str | None, secrets: dict[str, str], verify: bool) -> dict[str, Any]:
        """Replace (or add) an app's secrets, e.g. a rotated database password, without downtime: with
        ``verify`` the app's agent is first asked for the app's status with the new secrets, and only an
        answer that the engine is reachable with them (``running``) lets them into the vault; every later
        call to the agent carries the new values (they are read from the vault per call). Nothing changes
        when the check fails."""
        from frieze.coordinator.agents import AppRef, app_ref
        from frieze.core.errors import AuthError

        if not secrets or any(not k or len(k) > 50 or "/" in k for k in secrets):
            raise UsageError("give at least one secret, each with a name of 1-50 characters without '/'")
        with self.catalog.session() as s:
            h = resolve(s, Host, host, "host") if host else None
            a = resolve(s, App, app, "app", **({"host_id": h.id} if h else {}))
            base = app_ref(a)
            old_refs = dict(a.secret_refs)
            host_row = s.get(Host, a.host_id)
            assert host_row is not None
            s.expunge(host_row)
        merged = {k: self.secrets.get(v).reveal() for k, v in old_refs.items() if k not in secrets}
        merged.update(secrets)
        if verify:
            self.registry.check_callable(host_row)
            st = self.agents.for_host(host_row).app_status(AppRef(
                id=base.id, name=base.name, kind=base.kind, data_dir=base.data_dir, options=base.options,
                secrets=merged))
            if not st.get("running"):
                raise AuthError(f"app {base.name!r} on host {host_row.name!r} is not reachable with the new "
                                "secrets; nothing was changed", app=base.name, host=host_row.name)
        for k, v in secrets.items():
            self.secrets.put(Resources.app_secret_name(base.id, k), v)
        with self.catalog.session() as s:
            row = s.get(App, base.id)
            assert row is not None
            row.secret_refs = {**old_refs, **{k: Resources.app_secret_name(base.id, k) for k in secrets}}
        log.info("app_secrets_rotated", app=base.name, names=sorted(secrets), verified=verify)
        return self.resources.get_app(base.id)

    def rotate_repository_password(self, repository: str, new_password: str) -> dict[str, Any]:
        view = self.resources.get_repository(repository)
        res = self.repos.rotate_password(view["id"], new_password)
        log.info("repository_password_rotated", repository=view["name"], slot=res["slot"])
        return {**self.resources.get_repository(view["id"]), "rotation": res}

    def rotate_repository_s3(self, repository: str, s3: dict[str, str]) -> dict[str, Any]:
        view = self.resources.get_repository(repository)
        res = self.repos.rotate_s3(view["id"], s3)
        log.info("repository_s3_keys_rotated", repository=view["name"])
        return {**self.resources.get_repository(view["id"]), "rotation": res}

    def create_repository(self, name: str, url: str, password: str, init: bool,
                          s3: dict[str, str], max_concurrent: int = 2) -> dict[str, Any]:
        return self.repos.register(self.resources, name, url, password, init, s3, max_concurrent)

    def create_policy(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.resources.create_policy(*args, **kwargs)

    def new_enrollment_token(self, host: str, ttl_s: float = 3600.0) -> tuple[dict[str, Any], str]:
        """A new one-time enrollment token for a registered host (e.g. one made by provisioning, or whose
        first token expired); only its hash is kept."""
        view = self.resources.get_host(host)
        token = self.registry.new_enrollment_token(view["id"], ttl_s)
        log.info("enrollment_token_issued", host=view["name"])
        return view, token

    # -- declarative provisioning (an operation) ------------------------------------------------------
    def plan_provision(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """What a provision of ``batch`` would do (create or unchanged, per item); changes nothing."""
        return [it.public() for it in self.provisioner.plan(batch)]

    def submit_provision(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Validate the whole batch, seal its secrets under pending names, and submit the ``provision``
        operation (coordinator.provision). A bad batch raises and changes nothing."""
        from frieze.core.ids import new_id

        engine = self._engine()
        active = {str(st.args.get("provision_id")) for st in engine.list(type="provision", limit=1000)
                  if not st.state.final}
        if n := self.provisioner.sweep_pending(active):
            log.info("pending_provision_secrets_swept", count=n)
        plan = self.provisioner.plan(batch)
        pid = new_id("prov")
        self.provisioner.seal(pid, plan)
        items = [it.args() for it in plan]
        try:
            op_id = engine.submit("provision", {"provision_id": pid, "items": items})
        except BaseException:
            self.provisioner.drop_pending(items)
            raise
        OPS_SUBMITTED.labels("provision").inc()
        return {**self._accepted(op_id), "plan": [it.public() for it in plan]}

    def next_epoch(self) -> int:
        """A new freeze epoch, strictly greater than every earlier one (one catalog transaction)."""
        with self.catalog.session() as s:
            c = s.get(Counter, "freeze_epoch", with_for_update=True)
            if c is None:
                c = Counter(name="freeze_epoch", value=0)
                s.add(c)
            c.value += 1
            s.flush()
            return c.value

    # -- operations -----------------------------------------------------------------------------------
    def _engine(self) -> Any:
        if self.engine is None:
            raise UsageError("the workflow engine is not running in this process")
        return self.engine

    def _accepted(self, op_id: str) -> dict[str, Any]:
        st = self._engine().status(op_id)
        return {"operation_id": op_id, "state": st.state.value}

    def backup_args(self, protection_set: str, policy: str | None, repository: str | None,
                    consistency: str | None, scheduled_for: str | None = None) -> dict[str, Any]:
        """Validate a backup request against the catalog and turn it into the workflow's arguments."""
        with self.catalog.session() as s:
            ps = resolve(s, ProtectionSet, protection_set, "protection set")
            pol = resolve(s, Policy, policy, "policy") if policy else None
            if pol is not None and pol.protection_set_id != ps.id:
                raise UsageError(f"policy {pol.name!r} is not for protection set {ps.name!r}", policy=pol.name)
            if repository:
                repo = resolve(s, Repository, repository, "repository")
            elif pol is not None:
                repo = s.get(Repository, pol.repository_id)  # type: ignore[assignment]
            else:
                raise UsageError("a backup needs a policy or a repository", protection_set=ps.name)
            return {
                "protection_set_id": ps.id, "policy_id": pol.id if pol else None, "repository_id": repo.id,
                "consistency": consistency or (pol.consistency if pol else "application"),
                "on_quiesce_failure": pol.on_quiesce_failure if pol else "abort",
                "lease_s": pol.lease_s if pol else 60.0,
                "keep_host_snapshots": pol.keep_host_snapshots if pol else 0,
                "retention": dict(pol.retention) if pol else {},
                "scheduled_for": scheduled_for,
            }

    def submit_backup(self, protection_set: str, policy: str | None, repository: str | None,
                      consistency: str | None, scheduled_for: str | None = None) -> dict[str, Any]:
        args = self.backup_args(protection_set, policy, repository, consistency, scheduled_for)
        op_id = self._engine().submit("backup", args, resources=self._backup_resources(args))
        OPS_SUBMITTED.labels("backup").inc()
        return self._accepted(op_id)

    def _backup_resources(self, args: dict[str, Any]) -> dict[str, Any]:
        """Admission (coordinator.limits): one backup per volume at a time, and a counted hold of each host of
        the set and of the repository, within the effective limits of the hosts, the repository and the policy."""
        from frieze.coordinator.limits import counted, effective

        with self.catalog.session() as s:
            ps = s.get(ProtectionSet, args["protection_set_id"])
            assert ps is not None
            pol = s.get(Policy, args["policy_id"]) if args.get("policy_id") else None
            repo = s.get(Repository, args["repository_id"])
            assert repo is not None
            vols = [s.get(Volume, v) for v in ps.volume_ids]
            apps = [s.get(App, a) for a in ps.app_ids]
            host_ids = sorted({v.host_id for v in vols if v is not None} | {a.host_id for a in apps if a is not None})
            wanted = [("host", h.id, effective(h.max_concurrent, pol.max_per_host if pol else None))
                      for h in (s.get(Host, x) for x in host_ids) if h is not None]
            wanted.append(("repo", repo.id, effective(repo.max_concurrent, pol.max_per_repository if pol else None)))
            vol_ids = sorted(ps.volume_ids)
        return {"host": None, "target": args["repository_id"],
                "exclusive": [f"vol:{v}" for v in vol_ids], "counted": counted(wanted)}

    def bind_schedule_run(self, policy_id: str, tick: str, op_id: str) -> str:
        """Bind the scheduled run (policy, tick) to ``op_id`` unless another operation holds it already;
        returns the operation that owns the run (``op_id`` when this one may go on). A run with no claim row
        (e.g. after the catalog was restored) is claimed here."""
        from sqlalchemy import update
        from sqlalchemy.exc import IntegrityError as SAIntegrityError

        for _ in range(3):
            with self.catalog.session() as s:
                s.execute(update(ScheduleRun).where(ScheduleRun.policy_id == policy_id, ScheduleRun.tick == tick,
                                                    ScheduleRun.op_id.is_(None)).values(op_id=op_id))
                row = s.get(ScheduleRun, (policy_id, tick), populate_existing=True)
                if row is not None and row.op_id is not None:
                    return row.op_id
            try:
                with self.catalog.session() as s:
                    s.add(ScheduleRun(policy_id=policy_id, tick=tick, claimed_by=self.config.executor_id,
                                      op_id=op_id))
                return op_id
            except SAIntegrityError:
                continue  # claimed meanwhile: bind to it on the next round
        raise Conflict(f"cannot bind the scheduled run of policy {policy_id} at {tick}", policy=policy_id, tick=tick)

    def submit_restore(self, restore_point: str, volume: str | None, target_host: str | None,
                       target_path: str | None, paths: list[str], overwrite: bool) -> dict[str, Any]:
        with self.catalog.session() as s:
            rp = s.get(RestorePoint, restore_point)
            if rp is None or rp.forgotten:
                raise NotFound(f"restore point {restore_point!r} does not exist", restore_point=restore_point)
            vols = list(rp.volumes)
            if volume is not None:
                vol = resolve(s, Volume, volume, "volume")
                entry = next((v for v in vols if v["volume_id"] == vol.id), None)
                if entry is None:
                    raise NotFound(f"volume {volume!r} is not in restore point {rp.id}", volume=volume)
            elif len(vols) == 1:
                entry = vols[0]
            else:
                raise UsageError(f"restore point {rp.id} has {len(vols)} volumes; name one with volume",
                                 restore_point=rp.id)
            host = resolve(s, Host, target_host, "host") if target_host else s.get(Host, entry["host_id"])
            assert host is not None
            path = target_path or entry["path"]
            check_volume_paths(paths, "restore")
            args = {"restore_point_id": rp.id, "volume_id": entry["volume_id"], "target_host_id": host.id,
                    "target_path": path, "paths": paths, "overwrite": overwrite}
            s.expunge(host)
        if not overwrite:
            self._refuse_existing_target(host, path)
            self.refuse_running_app(host.id, path, strict=False)
        op_id = self._engine().submit("restore", args)
        OPS_SUBMITTED.labels("restore").inc()
        return self._accepted(op_id)

    def refuse_running_app(self, host_id: str, path: str, *, strict: bool) -> None:
        """Refuse a restore into ``path`` on the host when it holds (or lies inside) the data directory of a
        registered app that is running: the coordinator asks the app's agent with the app's own secrets (an
        agent alone cannot tell for an engine behind a password). ``strict``: an app whose state cannot be
        told also refuses (the workflow); otherwise that is left to the workflow (the API answer)."""
        import os.path

        from frieze.coordinator.agents import app_ref
        from frieze.core.errors import Conflict

        def overlaps(a: str, b: str) -> bool:
            a, b = os.path.normpath(a), os.path.normpath(b)
            return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")

        with self.catalog.session() as s:
            host = s.get(Host, host_id)
            if host is None:
                return
            s.expunge(host)
            apps = [(app_ref(a), dict(a.secret_refs)) for a in s.scalars(select(App).where(App.host_id == host_id))
                    if overlaps(a.data_dir, path)]
        for ref, refs in apps:
            try:
                self.registry.check_callable(host)
                full = app_ref_with(ref, {k: self.secrets.get(v).reveal() for k, v in refs.items()})
                running = bool(self.agents.for_host(host).app_status(full).get("running"))
            except FriezeError as e:
                if strict:
                    raise Conflict(f"restore into {path}: cannot tell whether app {ref.name!r} on host "
                                   f"{host.name!r} is running ({e.code}); pass overwrite to restore anyway",
                                   path=path, app=ref.name) from e
                continue
            if running:
                raise Conflict(f"restore into {path} would overwrite the data of running app {ref.name!r} on host "
                               f"{host.name!r}; stop it or pass overwrite", path=path, app=ref.name, host=host.name)

    def _refuse_existing_target(self, host: Host, path: str) -> None:
        """Answer at once when the target exists and is not empty (the workflow checks again when it runs).
        An unreachable agent is not an error here: the operation will report it."""
        try:
            self.registry.check_callable(host)
            st = self.agents.for_host(host).target_state(path)
        except (Forbidden, Conflict) as e:
            if isinstance(e, Forbidden):
                raise  # e.g. a target outside the host's restore roots: refused now, nothing submitted
            return
        except FriezeError:
            return
        if st.get("exists") and not st.get("empty"):
            raise AlreadyExists(f"restore target {path} on host {host.name!r} exists and is not empty; choose "
                                "another path or pass overwrite", path=path, host=host.name)

    def submit_recover(self, app: str, host: str | None, time: str | None, position: str | None,
                       name: str | None) -> dict[str, Any]:
        if sum(x is not None for x in (time, position, name)) > 1:
            raise UsageError("a recovery target is at most one of time, position, name")
        with self.catalog.session() as s:
            h = resolve(s, Host, host, "host") if host else None
            a = resolve(s, App, app, "app", **({"host_id": h.id} if h else {}))
            args = {"app_id": a.id, "time": time, "position": position, "name": name}
        op_id = self._engine().submit("recover", args)
        OPS_SUBMITTED.labels("recover").inc()
        return self._accepted(op_id)

    # -- access: read a restore point's data through the coordinator ------------------------------------
    def submit_access(self, restore_point: str, volume: str | None, paths: list[str], ttl_s: float) -> dict[str, Any]:
        """The ``access`` operation: the chosen paths of a restore point's volume packed into a tar archive the
        caller downloads from the coordinator (workflows/access.py). Paths are checked before it is submitted."""
        from frieze.coordinator.workflows.access import sweep
        from frieze.repo.browse import resolve as resolve_path

        sweep(self.config.staging_dir)
        check_volume_paths(paths, "access")
        for p in paths:
            if not p.strip("/"):
                raise UsageError(f"access path {p!r} names no file; leave the paths out for the whole volume", path=p)
        if not 60 <= ttl_s <= 30 * 86400:
            raise UsageError(f"ttl_s must be from 60 s to 30 days, not {ttl_s:g}", ttl_s=ttl_s)
        repo_id, snap, vol_id = self.restore_point_volume(restore_point, volume)
        with self.repos.open(repo_id) as repo:
            tree = repo.load_snapshot(snap).tree
            for p in paths:
                resolve_path(repo, tree, p)  # NotFound naming the path
        op_id = self._engine().submit("access", {"restore_point_id": restore_point, "volume_id": vol_id,
                                                 "paths": list(paths), "ttl_s": ttl_s})
        OPS_SUBMITTED.labels("access").inc()
        return self._accepted(op_id)

    def access_archive(self, op_id: str) -> Path:
        """The path of the finished archive of access operation ``op_id``; NotFound when it does not exist,
        is not finished or has expired."""
        from frieze.coordinator.workflows.access import access_dir, sweep

        sweep(self.config.staging_dir)
        path = access_dir(self.config.staging_dir, op_id) / "archive.tar"
        if not (path.parent / "meta.json").exists() or not path.is_file():
            raise NotFound(f"no archive for access {op_id!r} (unknown, not finished, or expired)", access=op_id)
        return path

    def restore_point_volume(self, rp_id: str, volume: str | None) -> tuple[str, str, str]:
        """(repository id, repository snapshot id, volume id) of one volume (id or name; None: the only one)
        of a restore point; NotFound naming what is missing."""
        with self.catalog.session() as s:
            rp = s.get(RestorePoint, rp_id)
            if rp is None or rp.forgotten:
                raise NotFound(f"restore point {rp_id!r} does not exist", restore_point=rp_id)
            vols = list(rp.volumes)
            if volume is None and len(vols) == 1:
                entry = vols[0]
            else:
                entry = next((v for v in vols if volume in (v["volume_id"], v.get("volume"))), None)
            if entry is None:
                raise NotFound(f"volume {volume!r} is not in restore point {rp_id}; one of "
                               f"{', '.join(str(v.get('volume')) for v in vols)}", volume=volume)
            return rp.repository_id, str(entry["snapshot_id"]), str(entry["volume_id"])

    def list_files(self, rp_id: str, volume: str | None, path: str, recursive: bool) -> list[dict[str, Any]]:
        """Entries of a restore point's volume at ``path`` (relative; a directory's children)."""
        from frieze.repo.browse import ls

        repo_id, snap, _vol = self.restore_point_volume(rp_id, volume)
        with self.repos.open(repo_id) as repo:
            out = []
            for e in ls(repo, snap, path, recursive=recursive):
                d = e.to_dict()
                out.append({k: d.get(k) for k in ("path", "type", "mode", "size", "mtime", "target")})
                if len(out) >= 10000:
                    break
            return out

    def read_file(self, rp_id: str, volume: str | None, path: str) -> tuple[int, Any]:
        """(size, iterator of bytes) of one regular file of a restore point; every blob is authenticated by
        the repository before a byte of it is returned."""
        from frieze.repo.browse import resolve
        from frieze.repo.tree import NodeType

        repo_id, snap, _vol = self.restore_point_volume(rp_id, volume)
        with self.repos.open(repo_id) as repo:
            node, _tree = resolve(repo, repo.load_snapshot(snap).tree, path)
            if node is None or node.type is not NodeType.FILE:
                raise UsageError(f"{path!r} is not a regular file in restore point {rp_id}", path=path)
            extents = list(node.extents)

            def chunks() -> Any:
                for e in extents:
                    yield bytes(e.length) if e.id is None else repo.read_blob(e.id)

            return int(node.size), chunks()

    def _status(self, st: Any) -> dict[str, Any]:
        d: dict[str, Any] = st.to_dict()
        with self.catalog.session() as s:
            res = s.get(OpResult, st.id)
            d["result"] = dict(res.data) if res is not None else None
        return d

    def operation_status(self, op_id: str) -> dict[str, Any]:
        st = self._engine().status(op_id)
        if st.state.final:
            self.count_finished([st])
        return self._status(st)

    def list_operations(self, state: str | None, type_: str | None, limit: int) -> list[dict[str, Any]]:
        from frieze.engine import OpState

        st = None
        if state is not None:
            try:
                st = OpState(state)
            except ValueError as e:
                raise UsageError(f"unknown operation state {state!r}", state=state) from e
        return [self._status(x) for x in self._engine().list(state=st, type=type_, limit=limit)]

    def cancel_operation(self, op_id: str) -> dict[str, Any]:
        st = self._engine().cancel(op_id)
        if st.state.final:  # canceled while queued: no coordinator ran it, the one that canceled counts it
            self.count_finished([st], unowned=True)
        return {"operation_id": op_id, "state": st.state.value}

    def operation_logs(self, op_id: str, since: int) -> list[dict[str, Any]]:
        from frieze.core.clock import iso

        return [{"seq": ln.seq, "ts": iso(ln.ts), "level": ln.level, "step": ln.step, "message": ln.message}
                for ln in self._engine().logs(op_id, since=since)]

    def operation_diagnostics(self, op_id: str) -> bytes:
        data: bytes = self._engine().diagnostics(op_id)
        return data

    def record_result(self, op_id: str, data: dict[str, Any]) -> None:
        with self.catalog.session() as s:
            row = s.get(OpResult, op_id)
            if row is None:
                s.add(OpResult(op_id=op_id, data=data))
            else:
                row.data = data
