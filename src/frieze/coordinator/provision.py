"""Declarative provisioning: a batch of hosts, volumes, repositories, apps, protection sets and policies,
planned (validated) at once and applied by the ``provision`` workflow, one step per kind, each with its undo.

The contract (docs/design/coordinator.md, "Provisioning"):

- :meth:`Provisioner.plan` validates the *whole* batch against the catalog before anything changes: every
  field, every reference (to a catalog row, by id or name, or to an item of the same batch, by name), every
  name unique in the batch. An item whose name already exists is ``unchanged`` when it says what the catalog
  holds (secrets included, compared with the vault) and a :class:`Conflict` otherwise: provisioning creates,
  it never silently changes what exists (limits, secrets and passwords have their own rotation calls).
  A bad batch raises and changes nothing.
- Every item to create gets its catalog id in the plan, so a task that runs again after a crash finds its
  row and does not create a second one, and the undo deletes exactly the rows the plan created, never one
  that existed before.
- Secret values never enter the workflow's arguments, its logs or its result: :meth:`seal` stores them in the
  vault under ``pending/<provision id>/...`` and the arguments carry only those names; the apply step seals
  them under their final names, and the last step (or the undo) deletes the pending ones.
- Hosts are created without an enrollment token; ``POST /v1/hosts/{host}/enrollment-token`` issues one
  (``frieze provision apply`` does it for every host it created and prints them once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from frieze.coordinator.catalog.models import App, Base, Host, Policy, ProtectionSet, Repository, Volume
from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.repos import S3_KEYS, Repos, check_roots
from frieze.coordinator.resources import (
    Resources,
    _limit,
    _name,
    app_view,
    check_app,
    check_inside,
    check_policy,
    check_volume,
    host_view,
    policy_view,
    pset_view,
    repository_view,
    resolve,
    volume_view,
)
from frieze.coordinator.secrets_store import SecretStore
from frieze.core.errors import Conflict, NotFound, UsageError
from frieze.core.ids import new_id

#: the kinds, in the order they are created (undo deletes in the reverse order)
KINDS = ("hosts", "volumes", "repositories", "apps", "protection_sets", "policies")
MODELS: dict[str, type[Base]] = {"hosts": Host, "volumes": Volume, "repositories": Repository, "apps": App,
                                 "protection_sets": ProtectionSet, "policies": Policy}
VIEWS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "hosts": host_view, "volumes": volume_view, "repositories": repository_view, "apps": app_view,
    "protection_sets": pset_view, "policies": policy_view}
SINGULAR = {"hosts": "host", "volumes": "volume", "repositories": "repository", "apps": "app",
            "protection_sets": "protection set", "policies": "policy"}
PREFIX = {"hosts": "host", "volumes": "vol", "repositories": "repo", "apps": "app", "protection_sets": "pset",
          "policies": "pol"}
MAX_ITEMS = 500


@dataclass
class PlanItem:
    kind: str
    name: str
    id: str
    action: str  # "create" or "unchanged"
    #: what to create, references resolved to catalog ids (no secret values)
    spec: dict[str, Any] = field(default_factory=dict)
    #: secret key -> its value (only in memory, until :meth:`Provisioner.seal`)
    values: dict[str, str] = field(default_factory=dict, repr=False)
    #: secret key -> the vault name it is sealed under for the workflow (after :meth:`Provisioner.seal`)
    secrets: dict[str, str] = field(default_factory=dict)
    host: str | None = None

    def public(self) -> dict[str, Any]:
        d = {"kind": self.kind, "name": self.name, "id": self.id, "action": self.action}
        if self.host is not None:
            d["host"] = self.host
        return d

    def args(self) -> dict[str, Any]:
        """The item as the workflow's arguments hold it (no secret value)."""
        return {"kind": self.kind, "name": self.name, "id": self.id, "action": self.action, "spec": self.spec,
                "secrets": self.secrets}


def _differs(what: str, name: str, diffs: list[str]) -> Conflict:
    return Conflict(f"{what} {name!r} already exists with a different {', '.join(diffs)}; provisioning creates and "
                    "never changes what exists (use the resource's own call to change it)",
                    name=name, kind=what, fields=diffs)


class _Planner:
    """One pass over a batch in one catalog session (see the module's contract)."""

    def __init__(self, s: Session, secrets: SecretStore, config: CoordinatorConfig) -> None:
        self.s = s
        self.secrets = secrets
        self.config = config
        self.items: list[PlanItem] = []
        self.hosts: dict[str, str] = {}  # batch host name -> id
        self.volumes: dict[tuple[str, str], tuple[str, str]] = {}  # (host id, name) -> (id, path)
        self.repos: dict[str, str] = {}
        self.apps: dict[str, list[tuple[str, str | None]]] = {}  # name -> [(id, volume id)]
        self.psets: dict[str, str] = {}

    def _secret_equal(self, ref: str | None, value: str) -> bool:
        if ref is None:
            return False
        try:
            return self.secrets.get(ref).reveal() == value
        except NotFound:
            return False

    def _dup(self, kind: str, key: Any, seen: set[Any]) -> None:
        if key in seen:
            raise UsageError(f"{SINGULAR[kind]} {key if isinstance(key, str) else key[-1]!r} appears twice in "
                             "the batch", kind=SINGULAR[kind])
        seen.add(key)

    def _add(self, kind: str, name: str, existing: Any, diffs: list[str], spec: dict[str, Any],
             values: dict[str, str] | None = None, host: str | None = None) -> str:
        if existing is not None:
            if diffs:
                raise _differs(SINGULAR[kind], name, diffs)
            self.items.append(PlanItem(kind, name, existing.id, "unchanged", host=host))
            return str(existing.id)
        iid = new_id(PREFIX[kind])
        self.items.append(PlanItem(kind, name, iid, "create", spec, dict(values or {}), host=host))
        return iid

    def host_id(self, ref: str) -> str:
        return self.hosts.get(ref) or resolve(self.s, Host, ref, "host").id

    # -- per kind ---------------------------------------------------------------------------------------
    def plan_hosts(self, items: list[dict[str, Any]]) -> None:
        seen: set[Any] = set()
        for h in items:
            name = _name(h["name"], "host")
            self._dup("hosts", name, seen)
            mc = _limit(h.get("max_concurrent", 2), "max_concurrent")
            row = self.s.scalar(select(Host).where(Host.name == name))
            # an address left out is not compared: enrollment records the one the agent reports
            diffs = [] if row is None else [k for k, a, b in (("address", row.address, h.get("address") or row.address),
                                                              ("max_concurrent", row.max_concurrent, mc)) if a != b]
            self.hosts[name] = self._add("hosts", name, row, diffs,
                                         {"name": name, "address": h.get("address"), "max_concurrent": mc})

    def plan_volumes(self, items: list[dict[str, Any]]) -> None:
        seen: set[Any] = set()
        for v in items:
            check_volume(v["name"], v["path"], v["provider"])
            hid = self.host_id(v["host"])
            self._dup("volumes", (hid, v["name"]), seen)
            row = self.s.scalar(select(Volume).where(Volume.host_id == hid, Volume.name == v["name"]))
            diffs = [] if row is None else [k for k in ("path", "provider") if getattr(row, k) != v[k]]
            vid = self._add("volumes", v["name"], row, diffs, {"host_id": hid, "name": v["name"], "path": v["path"],
                                                               "provider": v["provider"]}, host=hid)
            self.volumes[(hid, v["name"])] = (vid, v["path"])

    def plan_repositories(self, items: list[dict[str, Any]]) -> None:
        seen: set[Any] = set()
        for r in items:
            name = _name(r["name"], "repository")
            self._dup("repositories", name, seen)
            mc = _limit(r.get("max_concurrent", 2), "max_concurrent")
            url = r["url"]
            if not isinstance(url, str) or not (url.startswith("/") or url.startswith(("file:///", "s3://"))):
                raise UsageError(f"repository URL {url!r}: use file:///absolute/path, an absolute path or "
                                 "s3://bucket/prefix", url=url)
            if not r.get("password"):
                raise UsageError(f"repository {name!r}: the password must not be empty", name=name)
            check_roots(url, self.config.repository_roots)
            values = {"password": r["password"], **{k: r[k] for k in S3_KEYS if r.get(k)}}
            row = self.s.scalar(select(Repository).where(Repository.name == name))
            diffs: list[str] = []
            if row is not None:
                diffs = [k for k, a, b in (("url", row.url, url), ("max_concurrent", row.max_concurrent, mc))
                         if a != b]
                if not self._secret_equal(row.password_ref, values["password"]):
                    diffs.append("password")
                for k in S3_KEYS:
                    if k in values and not self._secret_equal(row.secret_refs.get(k), values[k]):
                        diffs.append(k)
            self.repos[name] = self._add("repositories", name, row, diffs,
                                         {"name": name, "url": url, "init": bool(r.get("init", False)),
                                          "max_concurrent": mc}, values)

    def plan_apps(self, items: list[dict[str, Any]]) -> None:
        seen: set[Any] = set()
        for a in items:
            check_app(a["name"], a["kind"], a["data_dir"])
            hid = self.host_id(a["host"])
            self._dup("apps", (hid, a["name"]), seen)
            vol_id = None
            if a.get("volume") is not None:
                hit = self.volumes.get((hid, a["volume"]))
                if hit is None:
                    vol = resolve(self.s, Volume, a["volume"], "volume", host_id=hid)
                    hit = (vol.id, vol.path)
                check_inside(a["data_dir"], a["volume"], hit[1])
                vol_id = hit[0]
            secrets = dict(a.get("secrets") or {})
            for k in secrets:
                if not k or len(k) > 50 or "/" in k:
                    raise UsageError(f"app {a['name']!r}: secret name {k!r} must be 1-50 characters without '/'")
            options = dict(a.get("options") or {})
            row = self.s.scalar(select(App).where(App.host_id == hid, App.name == a["name"]))
            diffs: list[str] = []
            if row is not None:
                diffs = [k for k, x, y in (("kind", row.kind, a["kind"]), ("data_dir", row.data_dir, a["data_dir"]),
                                           ("volume", row.volume_id, vol_id), ("options", row.options, options))
                         if x != y]
                diffs += [f"secret {k}" for k, v in secrets.items()
                          if not self._secret_equal(row.secret_refs.get(k), v)]
            aid = self._add("apps", a["name"], row, diffs,
                            {"host_id": hid, "name": a["name"], "kind": a["kind"], "data_dir": a["data_dir"],
                             "volume_id": vol_id, "options": options}, secrets, host=hid)
            self.apps.setdefault(a["name"], []).append((aid, vol_id))

    def _batch_or_catalog(self, ref: str, batch: dict[str, list[tuple[str, str | None]]], model: type[Base],
                          what: str) -> tuple[str, str | None]:
        hits = batch.get(ref, [])
        if len(hits) > 1:
            raise UsageError(f"{what} name {ref!r} is ambiguous in the batch (on several hosts); use an id", ref=ref)
        if hits:
            return hits[0]
        row: Any = resolve(self.s, model, ref, what)
        return str(row.id), getattr(row, "volume_id", None)

    def plan_protection_sets(self, items: list[dict[str, Any]]) -> None:
        seen: set[Any] = set()
        batch_vols: dict[str, list[tuple[str, str | None]]] = {}
        for (_hid, vname), (vid, _p) in self.volumes.items():
            batch_vols.setdefault(vname, []).append((vid, None))
        for p in items:
            name = _name(p["name"], "protection set")
            self._dup("protection_sets", name, seen)
            apps, vols = list(p.get("apps") or []), list(p.get("volumes") or [])
            if not apps and not vols:
                raise UsageError(f"protection set {name!r} needs at least one app or volume", name=name)
            app_ids: list[str] = []
            vol_ids = [self._batch_or_catalog(v, batch_vols, Volume, "volume")[0] for v in vols]
            for ref in apps:
                aid, avol = self._batch_or_catalog(ref, self.apps, App, "app")
                if avol is None:
                    raise UsageError(f"app {ref!r} has no volume; register one for it first", app=ref)
                app_ids.append(aid)
                if avol not in vol_ids:
                    vol_ids.append(avol)
            row = self.s.scalar(select(ProtectionSet).where(ProtectionSet.name == name))
            diffs = [] if row is None else [k for k, x, y in (("apps", set(row.app_ids), set(app_ids)),
                                                              ("volumes", set(row.volume_ids), set(vol_ids))) if x != y]
            self.psets[name] = self._add("protection_sets", name, row, diffs,
                                         {"name": name, "app_ids": app_ids, "volume_ids": vol_ids})

    def plan_policies(self, items: list[dict[str, Any]]) -> None:
        seen: set[Any] = set()
        fields = ("cron", "timezone", "consistency", "on_quiesce_failure", "lease_s", "retention",
                  "keep_host_snapshots", "max_per_host", "max_per_repository")
        defaults: dict[str, Any] = {"cron": None, "timezone": "UTC", "consistency": "application",
                                    "on_quiesce_failure": "abort", "lease_s": 60.0, "retention": {},
                                    "keep_host_snapshots": 0, "max_per_host": None, "max_per_repository": None}
        for p in items:
            f = {k: p.get(k, defaults[k]) for k in fields}
            f["lease_s"] = float(f["lease_s"])
            check_policy(p["name"], f["cron"], f["timezone"], f["consistency"], f["on_quiesce_failure"], f["lease_s"],
                         f["retention"], f["max_per_host"], f["max_per_repository"])
            self._dup("policies", p["name"], seen)
            ps = self.psets.get(p["protection_set"]) or resolve(self.s, ProtectionSet, p["protection_set"],
                                                                "protection set").id
            repo = self.repos.get(p["repository"]) or resolve(self.s, Repository, p["repository"], "repository").id
            row = self.s.scalar(select(Policy).where(Policy.name == p["name"]))
            diffs = [] if row is None else [k for k in fields if getattr(row, k) != f[k]] + [
                k for k, x, y in (("protection_set", row.protection_set_id, ps),
                                  ("repository", row.repository_id, repo)) if x != y]
            self._add("policies", p["name"], row, diffs,
                      {"name": p["name"], "protection_set_id": ps, "repository_id": repo, **f})


class Provisioner:
    """Plans a batch, seals its secrets for the workflow, and applies or undoes one item at a time."""

    def __init__(self, resources: Resources, secrets: SecretStore, repos: Repos, config: CoordinatorConfig) -> None:
        self.resources = resources
        self.secrets = secrets
        self.repos = repos
        self.config = config

    def plan(self, batch: dict[str, list[dict[str, Any]]]) -> list[PlanItem]:
        """Validate ``batch`` (kind -> items, secret values as plain strings) and return the plan, in creation
        order. Raises UsageError, NotFound, Conflict, Forbidden naming the problem; changes nothing."""
        unknown = set(batch) - set(KINDS)
        if unknown:
            raise UsageError(f"unknown kinds in the batch: {', '.join(sorted(unknown))}; one of {', '.join(KINDS)}")
        total = sum(len(batch.get(k) or []) for k in KINDS)
        if total == 0:
            raise UsageError("the batch is empty: give at least one of " + ", ".join(KINDS))
        if total > MAX_ITEMS:
            raise UsageError(f"the batch has {total} items; at most {MAX_ITEMS} at once", items=total)
        with self.resources.catalog.session() as s:
            p = _Planner(s, self.secrets, self.config)
            for kind in KINDS:
                getattr(p, f"plan_{kind}")(list(batch.get(kind) or []))
            s.rollback()
        return p.items

    @staticmethod
    def pending_prefix(provision_id: str) -> str:
        return f"pending/{provision_id}/"

    def seal(self, provision_id: str, plan: list[PlanItem]) -> None:
        """Seal every secret of the plan under ``pending/<provision id>/<kind>/<item id>/<key>``."""
        for it in plan:
            for k, v in it.values.items():
                name = f"{self.pending_prefix(provision_id)}{it.kind}/{it.id}/{k}"
                self.secrets.put(name, v)
                it.secrets[k] = name
            it.values = {}

    def sweep_pending(self, active: set[str], older_than_s: float = 600.0) -> int:
        """Delete the pending secrets of every provision not in ``active`` (ids of provisions whose operation is
        not final) and sealed more than ``older_than_s`` ago (so a batch being submitted right now keeps its
        own): those a provision canceled while queued left behind. Returns how many were deleted."""
        from datetime import timedelta

        from frieze.coordinator.catalog.models import SecretRecord
        from frieze.core.clock import now

        cutoff = now() - timedelta(seconds=older_than_s)
        with self.resources.catalog.session() as s:
            names = [r.name for r in s.scalars(select(SecretRecord).where(SecretRecord.name.like("pending/%")))
                     if r.name.split("/")[1] not in active and r.updated_at.replace(tzinfo=cutoff.tzinfo) < cutoff]
        for n in names:
            self.secrets.delete(n)
        return len(names)

    def drop_pending(self, items: list[dict[str, Any]]) -> int:
        n = 0
        for it in items:
            for name in it.get("secrets", {}).values():
                self.secrets.delete(name)
                n += 1
        return n

    # -- apply and undo (idempotent: a task may run again after a crash) -----------------------------------
    def exists(self, kind: str, row_id: str) -> bool:
        with self.resources.catalog.session() as s:
            return s.get(MODELS[kind], row_id) is not None

    def create(self, it: dict[str, Any]) -> bool:
        """Create one planned item unless its row exists (then only its final secrets are sealed again).
        Returns whether it created the row."""
        kind, sp, rid = it["kind"], it["spec"], it["id"]
        values = {k: self.secrets.get(n).reveal() for k, n in it.get("secrets", {}).items()}
        if kind == "apps":  # secrets first: an app row never names a secret the vault lacks
            for k, v in values.items():
                self.secrets.put(Resources.app_secret_name(rid, k), v)
        if self.exists(kind, rid):
            if kind == "repositories":
                for k, v in values.items():
                    self.secrets.put(f"repo/{rid}/{k}", v)
            return False
        r = self.resources
        if kind == "hosts":
            r.create_host(sp["name"], sp["address"], None, max_concurrent=sp["max_concurrent"], id=rid)
        elif kind == "volumes":
            r.create_volume(sp["host_id"], sp["name"], sp["path"], sp["provider"], id=rid)
        elif kind == "repositories":
            s3 = {k: values[k] for k in S3_KEYS if k in values}
            self.repos.register(r, sp["name"], sp["url"], values["password"], sp["init"], s3, sp["max_concurrent"],
                                repo_id=rid, resume=True)
        elif kind == "apps":
            r.create_app(sp["host_id"], sp["name"], sp["kind"], sp["data_dir"], sp["volume_id"], sp["options"],
                         sorted(values), id=rid)
        elif kind == "protection_sets":
            r.create_protection_set(sp["name"], sp["app_ids"], sp["volume_ids"], id=rid)
        elif kind == "policies":
            r.create_policy(sp["name"], sp["protection_set_id"], sp["repository_id"], sp["cron"], sp["timezone"],
                            sp["consistency"], sp["on_quiesce_failure"], sp["lease_s"], sp["retention"],
                            sp["keep_host_snapshots"], sp["max_per_host"], sp["max_per_repository"], id=rid)
        else:
            raise UsageError(f"unknown kind {kind!r}")
        return True

    def delete(self, it: dict[str, Any]) -> bool:
        """Undo one created item: its row and its sealed secrets (a repository's storage is left in place)."""
        kind, rid = it["kind"], it["id"]
        gone = self.resources.delete(MODELS[kind], rid)
        if kind == "repositories":
            self.repos.forget(rid)
            self.repos.drop_secrets(rid)
        elif kind == "apps":
            for k in it.get("secrets", {}):
                self.secrets.delete(Resources.app_secret_name(rid, k))
        return gone

    def view(self, kind: str, row_id: str) -> dict[str, Any] | None:
        with self.resources.catalog.session() as s:
            row = s.get(MODELS[kind], row_id)
            return VIEWS[kind](row) if row is not None else None
