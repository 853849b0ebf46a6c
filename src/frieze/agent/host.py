"""The host service behind the agent's API: apps and volumes of the host configuration, their plug-ins and
providers, freeze epochs. Every action is split in two:

- ``check_*`` validates the request against the configuration and the live system **without changing
  anything** and raises the clear error (unknown app, missing volume, provider that cannot snapshot that file
  system, stale epoch) — the API calls it before a task exists;
- ``do_*`` performs it (run as a task) and returns ``(changed, message, result)``.

Plug-in instances are kept per kind for the agent's lifetime (a quiesce is held by the instance that made it).
Freezes go through :class:`frieze.agent.freezer.Freezer` (the guardian when configured).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from frieze.agent.config import AppConfig, HostConfig, VolumeConfig, read_secrets
from frieze.agent.freezer import Freezer, make_freezer
from frieze.core.errors import Conflict, FriezeError, NotFound, NotSupported, StaleEpoch, UsageError
from frieze.host.apps import registry as app_registry
from frieze.host.apps.base import AppPlugin, AppSpec, RecoveryTarget
from frieze.host.providers.base import SnapshotProvider, SnapshotRef
from frieze.protocol.models import (
    AppCall,
    QuiesceRequest,
    RecoverRequest,
    SnapshotRequest,
    UnquiesceRequest,
    valid_name,
)

Outcome = tuple[bool, str, dict[str, Any]]

PROVIDER_GROUP = "frieze.providers"
#: What an unquiesce may hand back that belongs in the snapshot (file name in the app's data dir).
SNAPSHOT_FILES = ("backup_label", "tablespace_map")
#: Providers that do no I/O on the volume's own file system (the snapshot is made elsewhere).
NO_IO_PROVIDERS = frozenset({"helper"})
BUILTIN_PROVIDERS = {
    "btrfs": "frieze.host.providers.btrfs:BtrfsProvider",
    "reflink": "frieze.host.providers.reflink:ReflinkProvider",
    "copy": "frieze.host.providers.copy:CopyProvider",
    "helper": "frieze.host.providers.helper:HelperProvider",
}


def declared_providers() -> dict[str, str]:
    eps = {e.name: e.value for e in entry_points(group=PROVIDER_GROUP)}
    return eps or dict(BUILTIN_PROVIDERS)


class EpochStore:
    """The highest freeze epoch seen per target (``app:x``, ``volume:y``), kept in ``<state>/epochs.json``
    (survives restarts). Per target, so two protection sets backing up different apps of one host at once do
    not fence each other off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            raw = json.loads(path.read_text())
            self._values: dict[str, int] = {str(k): int(v) for k, v in raw.items()}
        except (FileNotFoundError, ValueError, AttributeError):
            self._values = {}

    def value(self, target: str) -> int:
        return self._values.get(target, 0)

    def check(self, target: str, epoch: int, what: str) -> None:
        cur = self.value(target)
        if epoch < cur:
            raise StaleEpoch(f"{what}: epoch {epoch} is older than epoch {cur} already seen for {target}",
                             epoch=epoch, current_epoch=cur)

    def see(self, targets: list[str], epoch: int) -> None:
        with self._lock:
            if all(epoch <= self.value(t) for t in targets):
                return
            for t in targets:
                self._values[t] = max(epoch, self.value(t))
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self._values))
            os.replace(tmp, self.path)


class HostService:
    def __init__(self, cfg: HostConfig) -> None:
        self.cfg = cfg
        cfg.state.mkdir(parents=True, exist_ok=True)
        self.epochs = EpochStore(cfg.state / "epochs.json")
        self._plugins: dict[str, AppPlugin] = {}
        self._providers: dict[str, SnapshotProvider] = {}
        self._lock = threading.Lock()
        self.freezer: Freezer = make_freezer(cfg, self.plugin)
        #: (volume, epoch) -> snapshot ids made under that epoch (for the files an unquiesce adds to them)
        self._epoch_snaps: dict[tuple[str, int], set[str]] = {}

    def close(self) -> None:
        self.freezer.close()

    # -- resolution (no side effects) ----------------------------------------------------------------
    def app(self, name: str) -> AppConfig:
        a = self.cfg.apps.get(name)
        if a is None:
            raise NotFound(f"app {name!r} is not configured on host {self.cfg.name!r} (configured: "
                           f"{', '.join(sorted(self.cfg.apps)) or 'none'})", app=name, host=self.cfg.name)
        return a

    def volume(self, name: str) -> VolumeConfig:
        v = self.cfg.volumes.get(name)
        if v is None:
            raise NotFound(f"volume {name!r} is not configured on host {self.cfg.name!r} (configured: "
                           f"{', '.join(sorted(self.cfg.volumes)) or 'none'})", volume=name, host=self.cfg.name)
        return v

    def plugin(self, kind: str) -> AppPlugin:
        with self._lock:
            p = self._plugins.get(kind)
            if p is None:
                p = app_registry.load(kind)
                self._plugins[kind] = p
            return p

    def provider(self, name: str) -> SnapshotProvider:
        with self._lock:
            p = self._providers.get(name)
            if p is None:
                ref = declared_providers().get(name)
                if ref is None:
                    raise NotFound(f"unknown snapshot provider {name!r} (known: "
                                   f"{', '.join(sorted(declared_providers()))})", provider=name)
                mod, _, cls = ref.partition(":")
                p = getattr(importlib.import_module(mod), cls)()
                if not isinstance(p, SnapshotProvider):
                    raise NotFound(f"provider {ref} does not implement the SnapshotProvider port", provider=name)
                self._providers[name] = p
            return p

    def spec(self, name: str, call: AppCall) -> AppSpec:
        a = self.app(name)
        if call.kind is not None and call.kind != a.kind:
            raise Conflict(f"app {name!r} on host {self.cfg.name!r} is kind {a.kind!r}, the caller said "
                           f"{call.kind!r}", app=name)
        if call.data_dir is not None and os.path.realpath(call.data_dir) != os.path.realpath(a.data_dir):
            raise Conflict(f"app {name!r} on host {self.cfg.name!r} has data_dir {a.data_dir}, the caller said "
                           f"{call.data_dir}", app=name)
        secrets = {**read_secrets(name, a), **call.secrets}
        return AppSpec(name=name, kind=a.kind, data_dir=a.data_dir, options=dict(a.options), secrets=secrets)

    # -- apps ----------------------------------------------------------------------------------------
    def check_app(self, name: str, call: AppCall, action: str) -> AppSpec:
        spec = self.spec(name, call)
        plugin = self.plugin(spec.kind)
        caps = plugin.capabilities
        if action in ("start", "stop") and not caps.start_stop:
            raise NotSupported(f"the {spec.kind} plug-in does not support {action} (app {name!r})",
                               plugin=spec.kind, call=action)
        if action in ("quiesce", "unquiesce") and not caps.quiesce:
            raise NotSupported(f"the {spec.kind} plug-in does not support {action} (app {name!r})",
                               plugin=spec.kind, call=action)
        if action == "verify" and not caps.verify:
            raise NotSupported(f"the {spec.kind} plug-in does not support verify (app {name!r})",
                               plugin=spec.kind, call=action)
        return spec

    def check_recover(self, name: str, req: RecoverRequest) -> tuple[AppSpec, RecoveryTarget]:
        spec = self.check_app(name, req, "recover")
        caps = self.plugin(spec.kind).capabilities
        need = ("recover_all_logs" if req.all_logs else "recover_to_time" if req.time is not None
                else "recover_to_position" if req.position is not None else "recover_to_named_point")
        if not getattr(caps, need):
            raise NotSupported(f"the {spec.kind} plug-in does not support {need.replace('_', ' ')} (app {name!r})",
                               plugin=spec.kind, call=need)
        return spec, RecoveryTarget(time=req.time, position=req.position, name=req.name)

    def check_quiesce(self, name: str, req: QuiesceRequest) -> AppSpec:
        spec = self.check_app(name, req, "quiesce")
        self.epochs.check(f"app:{name}", req.epoch, f"quiesce of app {name!r}")
        return spec

    def _app_targets(self, name: str) -> list[str]:
        vol = self.cfg.apps[name].volume
        return [f"app:{name}"] + ([f"volume:{vol}"] if vol else [])

    def do_start(self, spec: AppSpec) -> Outcome:
        r = self.plugin(spec.kind).start(spec)
        return r.changed, r.message, dict(r.info)

    def do_stop(self, spec: AppSpec) -> Outcome:
        r = self.plugin(spec.kind).stop(spec)
        return r.changed, r.message, dict(r.info)

    def do_status(self, spec: AppSpec) -> Outcome:
        st = dict(self.plugin(spec.kind).status(spec))
        st["guardian"] = self.freezer.describe()
        held = self.freezer.held_epoch(spec.name)
        if held is not False:  # the guardian holds quiesces: its record is the truth, not this process's plug-in
            st["quiesced"] = held is not None
            st.pop("lease_left_s", None)
            if held is None:
                st.pop("epoch", None)
            else:
                st["epoch"] = held
        return False, f"status of app {spec.name!r}", st

    def do_verify(self, spec: AppSpec) -> Outcome:
        r = self.plugin(spec.kind).verify(spec)
        return r.changed, r.message, dict(r.info)

    def do_recover(self, spec: AppSpec, target: RecoveryTarget) -> Outcome:
        r = self.plugin(spec.kind).recover(spec, target)
        return r.changed, r.message, dict(r.info)

    def do_quiesce(self, spec: AppSpec, req: QuiesceRequest) -> Outcome:
        self.epochs.check(f"app:{spec.name}", req.epoch, f"quiesce of app {spec.name!r}")
        self.epochs.see(self._app_targets(spec.name), req.epoch)
        changed, info = self.freezer.quiesce(spec, epoch=req.epoch, lease_s=req.lease_s)
        msg = (f"app {spec.name!r} quiesced under epoch {req.epoch} (lease {req.lease_s}s)" if changed
               else f"app {spec.name!r} is already quiesced under epoch {req.epoch}")
        return changed, msg, {"epoch": req.epoch, "lease_s": req.lease_s, "info": info}

    def do_unquiesce(self, spec: AppSpec, req: UnquiesceRequest) -> Outcome:
        changed, message, info = self.freezer.unquiesce(spec, epoch=req.epoch)
        lease_expired = bool(info.get("lease_expired"))
        held = info.get("held_ms", info.get("window_ms"))
        added = self._add_snapshot_files(spec.name, req.epoch, info) if not lease_expired else []
        return changed, message, {"frozen_ms": held, "lease_held": not lease_expired, "info": info,
                                  "snapshot_files_added": added}

    def extras_dir(self, volume: str, snap_id: str) -> Path:
        """Files an unquiesce added to a snapshot (PostgreSQL's backup_label...), served as part of it."""
        if not (valid_name(volume) and valid_name(snap_id)):
            raise UsageError(f"invalid volume or snapshot name {volume!r}/{snap_id!r}")
        return self.cfg.state / "snapshot-extras" / volume / snap_id

    def _add_snapshot_files(self, app: str, epoch: int, info: dict[str, Any]) -> list[str]:
        """Put what the engine handed back at unquiesce and the snapshot needs (``backup_label``,
        ``tablespace_map``) beside every snapshot of the app's volume taken under this epoch; the snapshot's
        listing, file reads and tar then include them at ``<data_dir relative to the volume>/<name>``."""
        files = {n: info[n] for n in SNAPSHOT_FILES if isinstance(info.get(n), str) and info[n]}
        a = self.cfg.apps.get(app)
        if not files or a is None or a.volume is None:
            return []
        vol = self.cfg.volumes[a.volume]
        rel = os.path.relpath(os.path.realpath(a.data_dir), os.path.realpath(vol.path))
        if rel.startswith(".."):
            return []
        added = []
        for snap_id in sorted(self._epoch_snaps.get((a.volume, epoch), ())):
            for n, content in files.items():
                relpath = n if rel == "." else f"{rel}/{n}".replace(os.sep, "/")
                dest = self.extras_dir(a.volume, snap_id) / relpath
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".tmp")
                tmp.write_text(content)
                os.chmod(tmp, 0o600)
                os.replace(tmp, dest)
                added.append(f"{snap_id}:{relpath}")
        return added

    # -- volumes -------------------------------------------------------------------------------------
    def check_volume(self, name: str) -> tuple[VolumeConfig, SnapshotProvider]:
        v = self.volume(name)
        if not os.path.isdir(v.path):
            raise NotFound(f"volume {name!r}: its path {v.path} does not exist on host {self.cfg.name!r}",
                           volume=name, path=v.path)
        prov = self.provider(v.provider)
        if not prov.supports(v.path):
            why_fn = getattr(prov, "why_unsupported", None)
            why = None
            with contextlib.suppress(Exception):
                why = why_fn(v.path) if why_fn is not None else None
            fs = fs_type(v.path)
            raise NotSupported(f"provider {v.provider!r} cannot snapshot volume {name!r} at {v.path} "
                               f"(file system {fs}){': ' + why if why else ''}",
                               volume=name, provider=v.provider, fs_type=fs)
        return v, prov

    def frozen_mounts(self) -> dict[str, str]:
        """Mount point → app name, for every ``files`` app (fsfreeze) currently quiesced on this host."""
        out: dict[str, str] = {}
        for app_name, a in self.cfg.apps.items():
            if a.kind != "files":
                continue
            held = self.freezer.held_epoch(app_name)
            if held is False:
                held = None
                with contextlib.suppress(FriezeError):
                    spec = AppSpec(name=app_name, kind=a.kind, data_dir=a.data_dir, options=dict(a.options))
                    st = self.plugin(a.kind).status(spec)
                    held = st.get("epoch") if st.get("quiesced") else None
            if held not in (None, False):
                mp = mount_point(a.data_dir)
                if mp:
                    out[mp] = app_name
        return out

    def check_not_frozen(self, path: str, what: str, provider: str | None = None) -> None:
        """Refuse (Conflict) any I/O of the agent on a mount that is fsfrozen right now (it would block, and a
        blocked writer cannot even be killed). Providers that do no I/O on the volume (helper) may go on."""
        if provider in NO_IO_PROVIDERS:
            return
        frozen = self.frozen_mounts()
        if not frozen:
            return
        existing = os.path.abspath(path)
        while not os.path.exists(existing) and existing != "/":
            existing = os.path.dirname(existing)
        mp = mount_point(existing)
        if mp is not None and mp in frozen:
            raise Conflict(f"{what}: {path} is on mount {mp}, which is frozen by app {frozen[mp]!r}; the agent does "
                           "no I/O on a frozen mount (unquiesce first, or use the helper provider)",
                           path=path, mount=mp, app=frozen[mp])

    def check_snapshot(self, name: str, req: SnapshotRequest) -> tuple[VolumeConfig, SnapshotProvider]:
        v, prov = self.check_volume(name)
        self.check_not_frozen(v.path, f"snapshot {req.snap_id!r} of volume {name!r}", v.provider)
        self.epochs.check(f"volume:{name}", req.epoch, f"snapshot {req.snap_id!r} of volume {name!r}")
        return v, prov

    def find_snapshot(self, name: str, snap_id: str) -> SnapshotRef | None:
        v = self.volume(name)
        prov = self.provider(v.provider)
        if not os.path.isdir(v.path):
            return None
        for ref in prov.list(v.path):
            if ref.snap_id == snap_id:
                return ref
        return None

    def snapshot_ref(self, name: str, snap_id: str) -> SnapshotRef:
        ref = self.find_snapshot(name, snap_id)
        if ref is None:
            raise NotFound(f"snapshot {snap_id!r} of volume {name!r} does not exist", volume=name, snap_id=snap_id)
        return ref

    def do_snapshot(self, name: str, req: SnapshotRequest) -> Outcome:
        v, prov = self.check_snapshot(name, req)
        self.epochs.see([f"volume:{name}"], req.epoch)
        self._epoch_snaps.setdefault((name, req.epoch), set()).add(req.snap_id)
        existing = self.find_snapshot(name, req.snap_id)
        if existing is not None:
            return False, f"snapshot {req.snap_id!r} of volume {name!r} already exists", _ref_dict(existing)
        ref = prov.snapshot(v.path, req.snap_id)
        return True, f"snapshot {req.snap_id!r} of volume {name!r} made by {prov.name}", _ref_dict(ref)

    def do_delete_snapshot(self, name: str, snap_id: str) -> Outcome:
        ref = self.find_snapshot(name, snap_id)
        if ref is None:
            return False, f"snapshot {snap_id!r} of volume {name!r} does not exist (nothing to delete)", {}
        self.check_not_frozen(ref.path, f"delete of snapshot {snap_id!r} of volume {name!r}", ref.provider)
        self.provider(ref.provider).delete(ref)
        shutil.rmtree(self.extras_dir(name, snap_id), ignore_errors=True)
        return True, f"snapshot {snap_id!r} of volume {name!r} deleted", {}

    def do_snapshot_exists(self, name: str, snap_id: str) -> Outcome:
        ref = self.find_snapshot(name, snap_id)
        return False, "", {"exists": ref is not None, "path": ref.path if ref else None}

    # -- discover ------------------------------------------------------------------------------------
    def do_discover(self) -> Outcome:
        apps = []
        for name, a in sorted(self.cfg.apps.items()):
            info: dict[str, Any] = {"name": name, "kind": a.kind, "data_dir": a.data_dir, "volume": a.volume}
            try:
                caps = self.plugin(a.kind).capabilities
                info["capabilities"] = {k: getattr(caps, k) for k in caps.__dataclass_fields__}
            except FriezeError as e:
                info["error"] = e.to_dict()
            apps.append(info)
        vols = []
        for name, v in sorted(self.cfg.volumes.items()):
            vi: dict[str, Any] = {"name": name, "path": v.path, "provider": v.provider,
                                  "exists": os.path.isdir(v.path)}
            if vi["exists"]:
                vi["fs_type"] = fs_type(v.path)
                vi["mount_point"] = mount_point(v.path)
            try:
                prov = self.provider(v.provider)
                vi["provider_supported"] = bool(vi["exists"] and prov.supports(v.path))
                pcaps = prov.capabilities
                vi["capabilities"] = {k: getattr(pcaps, k) for k in pcaps.__dataclass_fields__}
            except FriezeError as e:
                vi["provider_supported"] = False
                vi["error"] = e.to_dict()
            vols.append(vi)
        return False, f"host {self.cfg.name!r}: {len(apps)} apps, {len(vols)} volumes", {
            "host": self.cfg.name, "apps": apps, "volumes": vols, "guardian": self.freezer.describe()}


def _ref_dict(ref: SnapshotRef) -> dict[str, Any]:
    return {"snap_id": ref.snap_id, "path": ref.path, "provider": ref.provider, "volume": ref.volume}


def fs_type(path: str) -> str:
    try:
        from frieze.host.providers._fs import mount_of

        return mount_of(path).fstype
    except Exception:
        return "unknown"


def mount_point(path: str) -> str | None:
    try:
        from frieze.host.providers._fs import mount_of

        return mount_of(path).mount_point
    except Exception:
        return None
