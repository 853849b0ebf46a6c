"""The :class:`~frieze.coordinator.agents.AgentPort` over the real agent protocol (``frieze.protocol``).

One :class:`ProtocolAgent` per host, calling its agent at the address it enrolled with, over mutual TLS
with the coordinator's client certificate (OU=coordinator) and pinning the agent's certificate CN to the
host's registered name. Every action is submitted and its task polled to the end (the agent's error comes
back as its own FriezeError class). Apps and volumes are named as in the host's agent.toml.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from frieze.coordinator.agents import AppRef, VolumeRef
from frieze.coordinator.catalog.models import Host
from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.mover import FileEntry
from frieze.core.errors import Conflict
from frieze.protocol.ca import client_context, ensure_client_tls
from frieze.protocol.client import AgentClient
from frieze.protocol.models import FileEntry as WireEntry
from frieze.protocol.remote import RemoteSource

#: how long one agent task may run (a copy snapshot or a restore of a large volume is long)
LONG_S = 6 * 3600.0
SHORT_S = 120.0


def base_url(address: str) -> str:
    return address if address.startswith("https://") else "https://" + address.removeprefix("http://")


def _entry(d: dict[str, Any]) -> FileEntry:
    """The mover's entry from the wire's (the fields the mover keeps)."""
    return FileEntry(path=d["path"], type=d["type"], size=d["size"], mode=d["mode"], mtime_ns=d["mtime_ns"],
                     digest=d["digest"], target=d["target"], uid=d.get("uid"), gid=d.get("gid"))


class _Sink:
    """Writes entries under ``target``; the target's initial state was checked by the workflow, so after the
    first entry (sent with the caller's ``overwrite``) the agent is told the target is ours (force)."""

    def __init__(self, client: AgentClient, target: str, overwrite: bool) -> None:
        self.client, self.target, self.force = client, target, overwrite

    def put(self, entry: FileEntry, chunks: Iterable[bytes] | None) -> None:
        wire = WireEntry(path=entry.path, type=entry.type, size=entry.size, mode=entry.mode,  # type: ignore[arg-type]
                         mtime_ns=entry.mtime_ns, digest=entry.digest, target=entry.target, uid=entry.uid,
                         gid=entry.gid)
        self.client.put_file(self.target, wire, chunks, force=self.force)
        self.force = True


class ProtocolAgent:
    """The coordinator's port to one host's agent."""

    def __init__(self, host: Host, config: CoordinatorConfig, ctx: Any) -> None:
        if not host.address:
            raise Conflict(f"host {host.name!r} has not enrolled an agent yet", host=host.name)
        self.host = host.name
        self.client = AgentClient(base_url(host.address), ctx, expected_cn=host.name, timeout=60.0)

    def close(self) -> None:
        self.client.close()

    def version(self) -> str:
        return self.client.version().version

    def quiesce(self, app: AppRef, *, epoch: int, lease_s: float) -> dict[str, Any]:
        t = self.client.run(self.client.quiesce(app.name, epoch=epoch, lease_s=lease_s, secrets=app.secrets or None,
                                                kind=app.kind, data_dir=app.data_dir), SHORT_S + lease_s)
        return {"changed": t.changed, **(t.result or {})}

    def unquiesce(self, app: AppRef, *, epoch: int) -> dict[str, Any]:
        t = self.client.run(self.client.unquiesce(app.name, epoch=epoch, secrets=app.secrets or None), SHORT_S)
        res = dict(t.result or {})
        if t.changed is False:
            # nothing was frozen any more: released before we asked (lease ran out, agent restarted)
            res.setdefault("lease_held", False)
        return {"changed": t.changed, **res}

    def snapshot(self, volume: VolumeRef, *, snap_id: str, epoch: int) -> dict[str, Any]:
        t = self.client.run(self.client.snapshot(volume.name, snap_id=snap_id, epoch=epoch), LONG_S)
        return dict(t.result or {})

    def prepare_snapshot(self, volume: VolumeRef, snap_id: str) -> dict[str, Any]:
        t = self.client.run(self.client.prepare_snapshot(volume.name, snap_id), LONG_S)
        return {"changed": t.changed, **dict(t.result or {})}

    def snapshot_exists(self, volume: VolumeRef, snap_id: str) -> bool:
        t = self.client.run(self.client.snapshot_exists(volume.name, snap_id), SHORT_S)
        return bool((t.result or {}).get("exists"))

    def delete_snapshot(self, volume: VolumeRef, snap_id: str) -> None:
        self.client.run(self.client.delete_snapshot(volume.name, snap_id), LONG_S)

    def source(self, volume: VolumeRef, snap_id: str) -> RemoteSource:
        """The snapshot as the mover reads it: entries, whole files, byte ranges and the changed ranges since
        an earlier snapshot of the volume (when the volume's provider can tell)."""
        return RemoteSource(self.client, volume.name, snap_id, entry_factory=_entry)

    def target_state(self, path: str) -> dict[str, Any]:
        return dict(self.client.run(self.client.target_state(path), SHORT_S).result or {})

    def sink(self, path: str, *, overwrite: bool) -> _Sink:
        return _Sink(self.client, path, overwrite)

    def remove_target(self, path: str) -> None:
        self.client.run(self.client.remove_target(path), LONG_S)

    def app_status(self, app: AppRef) -> dict[str, Any]:
        return dict(self.client.run(self.client.status(app.name, secrets=app.secrets or None), SHORT_S).result or {})

    def recover(self, app: AppRef, *, time: str | None, position: str | None, name: str | None) -> dict[str, Any]:
        everything = time is None and position is None and name is None
        t = self.client.run(self.client.recover(app.name, time=time, position=position, name=name,
                                                all_logs=everything, secrets=app.secrets or None), LONG_S)
        return dict(t.result or {})


    def upgrade(self, data: bytes, sha256: str, filename: str) -> dict[str, Any]:
        t = self.client.run(self.client.upgrade(data, sha256, filename), LONG_S)
        return {"changed": t.changed, **(t.result or {})}


def factory(config: CoordinatorConfig) -> Any:
    """An AgentDirectory factory. The client certificate and TLS context are made once, under a lock (two
    hosts dialled at once must not both write the certificate files)."""
    lock = threading.Lock()
    ctx: list[Any] = []

    def make(host: Host) -> ProtocolAgent:
        with lock:
            if not ctx:
                tls = ensure_client_tls(config.ca_dir, config.executor_id)
                ctx.append(client_context(tls["cert"], tls["key"], tls["ca"]))
        return ProtocolAgent(host, config, ctx[0])

    return make
