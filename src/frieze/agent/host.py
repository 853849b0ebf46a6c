"""The host service behind the agent's API: apps and volumes of the host configuration, their plug-ins and
providers, freeze epochs. Every action is split in two:

- ``check_*`` validates the request against the configuration and the live system **without changing
  anything** and raises the clear error (unknown app, missing volume, provider that cannot snapshot that file
  system, stale epoch) — the API calls it before a task exists;
- ``do_*`` performs it (run as a task) and returns ``(changed, message, result)``.

Plug-in instances are kept per kind for the agent's lifetime (a quiesce is held by the instance that made it).
Freezes go through :class:`frieze.agent.freezer.Freezer` (the guardian when configured). A freeze of a mount
(``files``) or a user hook (``script``) is only ever held by the guardian: without one configured such a
quiesce is refused, so a killed agent can never leave a mount frozen.

The agent's own I/O on a mount and a ``files`` freeze of that mount are serialized by :class:`MountGuard`:
every write the agent makes (snapshot, delete, restore) registers with the guard for its whole duration and
is refused while the mount is frozen or being frozen; a freeze first marks the mount (new I/O is refused from
then on) and then waits until the I/O already running has finished, so nothing the agent does can block on a
freeze that raced with it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from frieze.agent.config import AppConfig, HostConfig, VolumeConfig, read_secrets
from frieze.agent.freezer import Freezer, make_freezer
from frieze.core.errors import Conflict, FriezeError, NotFound, NotSupported, StaleEpoch, UsageError
from frieze.host.apps import registry as app_registry
from frieze.host.apps.base import AppPlugin, AppSpec, RecoveryTarget
from frieze.host.providers._fs import check_snap_id
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


#: App kinds whose freeze nothing but the guardian may hold (a mount freeze, arbitrary user hooks).
GUARDIAN_ONLY_KINDS = frozenset({"files", "script"})
#: How long a files freeze waits for the agent's running I/O on its mount before it is refused.
FREEZE_IO_WAIT_S = 60.0


@dataclass
class _MountFreeze:
    app: str
    #: monotonic time after which the guardian has certainly thawed it (its lease, plus a margin)
    deadline: float | None = None


class MountGuard:
    """Serializes the agent's writes to a mount with ``files`` freezes of that mount (see the module doc)."""

    def __init__(self, still_live: Callable[[str], bool | None]) -> None:
        self._cond = threading.Condition()
        self._io: dict[str, int] = {}
        self._frozen: dict[str, _MountFreeze] = {}
        #: app -> is the guardian still holding its freeze (None: cannot tell)
        self._still_live = still_live

    def frozen_by(self, mount: str) -> str | None:
        """The app that holds (or is taking) a freeze of ``mount``, or None. Call with the lock held."""
        f = self._frozen.get(mount)
        if f is None:
            return None
        if f.deadline is not None and time.monotonic() > f.deadline and self._still_live(f.app) is False:
            del self._frozen[mount]  # the guardian thawed it when the lease ran out
            return None
        return f.app

    def frozen(self) -> dict[str, str]:
        with self._cond:
            return {m: a for m in list(self._frozen) if (a := self.frozen_by(m)) is not None}

    @contextlib.contextmanager
    def io(self, mount: str | None, what: str, path: str) -> Iterator[None]:
        """Hold ``mount`` busy for one write of the agent; Conflict at once if it is frozen or being frozen."""
        if mount is None:
            yield
            return
        with self._cond:
            app = self.frozen_by(mount)
            if app is not None:
                raise Conflict(f"{what}: {path} is on mount {mount}, which is frozen by app {app!r}; the agent "
                               "does no I/O on a frozen mount (unquiesce first, or use the helper provider)",
                               path=path, mount=mount, app=app)
            self._io[mount] = self._io.get(mount, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._io[mount] -= 1
                if not self._io[mount]:
                    del self._io[mount]
                self._cond.notify_all()

    def begin_freeze(self, mount: str, app: str, timeout_s: float = FREEZE_IO_WAIT_S) -> None:
        """Mark ``mount`` as being frozen by ``app`` (new I/O is refused), then wait for the running I/O."""
        with self._cond:
            other = self.frozen_by(mount)
            if other is not None and other != app:
                raise Conflict(f"mount {mount} is already frozen by app {other!r}", mount=mount, app=other)
            self._frozen[mount] = _MountFreeze(app)
            if not self._cond.wait_for(lambda: not self._io.get(mount), timeout_s):
                del self._frozen[mount]
                raise Conflict(f"cannot freeze {mount} for app {app!r}: the agent's own I/O on it did not finish "
                               f"within {timeout_s:.0f} s", mount=mount, app=app)

    def frozen_until(self, mount: str, deadline: float) -> None:
        with self._cond:
            f = self._frozen.get(mount)
            if f is not None:
                f.deadline = deadline

    def end_freeze(self, mount: str) -> None:
        with self._cond:
            self._frozen.pop(mount, None)
            self._cond.notify_all()


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
        self.mounts = MountGuard(self.freezer.is_live)
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
        if spec.kind in GUARDIAN_ONLY_KINDS and self.freezer.describe() is None:
            raise NotSupported(f"app {name!r} ({spec.kind}): only the freeze guardian may hold a {spec.kind} freeze "
                               "(a killed agent must never leave it in place); set guardian_socket in the host "
                               "configuration", app=name, plugin=spec.kind, call="quiesce")
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

    def _freeze_mount(self, spec: AppSpec) -> str | None:
        """The mount a ``files`` app freezes (None for other kinds)."""
        return mount_point(spec.data_dir) if spec.kind == "files" else None

    def do_quiesce(self, spec: AppSpec, req: QuiesceRequest) -> Outcome:
        self.epochs.check(f"app:{spec.name}", req.epoch, f"quiesce of app {spec.name!r}")
        if spec.kind in GUARDIAN_ONLY_KINDS and self.freezer.describe() is None:
            raise NotSupported(f"app {spec.name!r} ({spec.kind}): only the freeze guardian may hold this freeze",
                               app=spec.name, plugin=spec.kind, call="quiesce")
        self.epochs.see(self._app_targets(spec.name), req.epoch)
        mount = self._freeze_mount(spec)
        if mount is not None:
            self.mounts.begin_freeze(mount, spec.name)  # no agent I/O on it from here; waits for running I/O
        lease_s = req.lease_for(spec.kind)
        try:
            changed, info = self.freezer.quiesce(spec, epoch=req.epoch, lease_s=lease_s)
        except BaseException:
            if mount is not None and self.freezer.held_epoch(spec.name) in (None, False):
                self.mounts.end_freeze(mount)
            raise
        if mount is not None:
            self.mounts.frozen_until(mount, time.monotonic() + lease_s + 1.0)
        msg = (f"app {spec.name!r} quiesced under epoch {req.epoch} (lease {lease_s}s)" if changed
               else f"app {spec.name!r} is already quiesced under epoch {req.epoch}")
        return changed, msg, {"epoch": req.epoch, "lease_s": lease_s, "info": info}

    def do_unquiesce(self, spec: AppSpec, req: UnquiesceRequest) -> Outcome:
        changed, message, info = self.freezer.unquiesce(spec, epoch=req.epoch)
        mount = self._freeze_mount(spec)
        if mount is not None and self.freezer.held_epoch(spec.name) in (None, False):
            self.mounts.end_freeze(mount)
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
        owner = os.stat(a.data_dir)  # the engine's own files belong to its OS user (restored with that owner)
        for snap_id in sorted(self._epoch_snaps.get((a.volume, epoch), ())):
            for n, content in files.items():
                relpath = n if rel == "." else f"{rel}/{n}".replace(os.sep, "/")
                dest = self.extras_dir(a.volume, snap_id) / relpath
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".tmp")
                tmp.write_text(content)
                with contextlib.suppress(PermissionError):
                    os.chown(tmp, owner.st_uid, owner.st_gid)
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
        """Mount point → app name, for every ``files`` app (fsfreeze) frozen (or being frozen) right now."""
        return self.mounts.frozen()

    @staticmethod
    def _mount_of_path(path: str) -> str | None:
        existing = os.path.abspath(path)
        while not os.path.exists(existing) and existing != "/":
            existing = os.path.dirname(existing)
        return mount_point(existing)

    def check_not_frozen(self, path: str, what: str, provider: str | None = None) -> None:
        """Refuse (Conflict) any I/O of the agent on a mount that is fsfrozen right now (it would block, and a
        blocked writer cannot even be killed). Providers that do no I/O on the volume (helper) may go on.
        A check only: the write itself must run inside :meth:`io_on` (the freeze may come in between)."""
        with self.io_on(path, what, provider):
            pass

    @contextlib.contextmanager
    def io_on(self, path: str, what: str, provider: str | None = None) -> Iterator[None]:
        """Run one write of the agent under ``path``: refused at once (Conflict) while its mount is frozen, and
        a ``files`` freeze of that mount waits until it is done."""
        if provider in NO_IO_PROVIDERS:
            yield
            return
        with self.mounts.io(self._mount_of_path(path), what, path):
            yield

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
        with self.io_on(v.path, f"snapshot {req.snap_id!r} of volume {name!r}", v.provider):
            ref = prov.snapshot(v.path, req.snap_id)
        return True, f"snapshot {req.snap_id!r} of volume {name!r} made by {prov.name}", _ref_dict(ref)

    def check_prepare(self, name: str, snap_id: str) -> tuple[VolumeConfig, SnapshotProvider]:
        v, prov = self.check_volume(name)
        check_snap_id(snap_id, prov.name)
        self.check_not_frozen(v.path, f"prepare of snapshot {snap_id!r} of volume {name!r}", v.provider)
        return v, prov

    def do_prepare_snapshot(self, name: str, snap_id: str) -> Outcome:
        """Before the freeze: let the provider prepare the snapshot (the copy provider's pre-copy, so that the
        copy under the freeze writes only what changed). Nothing to do for instant providers."""
        v, prov = self.check_prepare(name, snap_id)
        if self.find_snapshot(name, snap_id) is not None:
            return False, f"snapshot {snap_id!r} of volume {name!r} already exists (nothing to prepare)", {}
        with self.io_on(v.path, f"prepare of snapshot {snap_id!r} of volume {name!r}", v.provider):
            info = prov.prepare(v.path, snap_id)
        if not info.get("prepared"):
            return False, f"provider {prov.name} needs no preparation for snapshot {snap_id!r}", info
        return True, (f"snapshot {snap_id!r} of volume {name!r} prepared by {prov.name}: {info.get('files')} "
                      f"file(s) pre-copied in {info.get('ms')} ms"), info

    def do_delete_snapshot(self, name: str, snap_id: str) -> Outcome:
        ref = self.find_snapshot(name, snap_id)
        if ref is None:
            v = self.volume(name)
            prov = self.provider(v.provider)
            if os.path.isdir(v.path):
                with self.io_on(v.path, f"delete of snapshot {snap_id!r} of volume {name!r}", v.provider):
                    if prov.unprepare(v.path, snap_id):
                        return True, f"preparation of snapshot {snap_id!r} of volume {name!r} removed", {}
            return False, f"snapshot {snap_id!r} of volume {name!r} does not exist (nothing to delete)", {}
        with self.io_on(ref.path, f"delete of snapshot {snap_id!r} of volume {name!r}", ref.provider):
            self.provider(ref.provider).delete(ref)
        shutil.rmtree(self.extras_dir(name, snap_id), ignore_errors=True)
        return True, f"snapshot {snap_id!r} of volume {name!r} deleted", {}

    def changed_ranges(self, name: str, snap_id: str, parent: str) -> dict[str, Any]:
        """Per regular file of snapshot ``snap_id``: the byte ranges ``[[offset, length], ...]`` that may differ
        from the same path in snapshot ``parent`` of the same volume (``[]``: unchanged), or ``None`` (read it
        all: new, replaced, or no extent map). A superset, never a subset (the provider's contract). Files an
        unquiesce added beside the snapshot (backup_label...) are always ``None``. Reads extent maps only."""
        if not valid_name(parent):
            raise UsageError(f"invalid parent snapshot name {parent!r}", parent=parent)
        v = self.volume(name)
        prov = self.provider(v.provider)
        if not prov.capabilities.changed_ranges:
            raise NotSupported(f"the {v.provider} provider of volume {name!r} cannot report changed ranges",
                               volume=name, provider=v.provider, call="changed_ranges")
        new = self.snapshot_ref(name, snap_id)
        old = self.snapshot_ref(name, parent)
        raw = prov.changed_ranges(old, new)
        files: dict[str, list[list[int]] | None] = {}
        for rel, ranges in raw.items():
            files[rel.replace(os.sep, "/")] = None if ranges is None else [[int(a), int(n)] for a, n in ranges]
        extras = self.extras_dir(name, snap_id)
        if extras.is_dir():
            for dirpath, _dirs, fnames in os.walk(extras):
                for fn in fnames:
                    files[os.path.relpath(os.path.join(dirpath, fn), extras).replace(os.sep, "/")] = None
        changed = sum(1 for r in files.values() if r is None or r)
        return {"volume": name, "snap_id": snap_id, "parent": parent, "provider": v.provider, "files": files,
                "files_changed": changed,
                "bytes_changed": sum(n for r in files.values() if r for _a, n in r)}

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
