"""What the coordinator needs from an agent (the port its workflows call), and where to get one per host.

:class:`AgentPort` is the coordinator's view of the agent protocol (docs/design/agent-protocol.md): every
call is one idempotent action, carries the freeze epoch where it matters, and blocks until the agent's
task is done (the implementation polls the agent's task id). Secrets an app needs (its database password)
are passed in ``AppRef.secrets`` for that one call only; repository keys and storage credentials never
cross this port.

:class:`AgentDirectory` resolves a host to a connected port after checking the registry (state,
maintenance, agent version). Tests install another factory with :meth:`AgentDirectory.set_factory`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from frieze.coordinator.catalog.models import App, Host, Volume
from frieze.coordinator.mover import RestoreSink, SnapshotSource
from frieze.core.errors import NotFound


@dataclass(frozen=True)
class AppRef:
    id: str
    name: str
    kind: str
    data_dir: str
    options: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class VolumeRef:
    id: str
    name: str
    path: str
    provider: str


class AgentPort(Protocol):
    host: str

    def version(self) -> str: ...

    def quiesce(self, app: AppRef, *, epoch: int, lease_s: float) -> dict[str, Any]:
        """Quiesce ``app`` under ``epoch`` for at most ``lease_s``; returns what the engine reported."""
        ...

    def unquiesce(self, app: AppRef, *, epoch: int) -> dict[str, Any]:
        """Release the freeze; safe when not quiesced. Returns ``{"changed", "frozen_ms", "lease_held"}``:
        ``lease_held`` is False when the guardian had already thawed it (the lease ran out)."""
        ...

    def snapshot(self, volume: VolumeRef, *, snap_id: str, epoch: int) -> dict[str, Any]:
        """Make (idempotently, by ``snap_id``) an immutable snapshot; returns ``{"snap_id", "path"}``."""
        ...

    def prepare_snapshot(self, volume: VolumeRef, snap_id: str) -> dict[str, Any]:
        """Before the freeze: let the volume's provider prepare snapshot ``snap_id`` (the copy provider's
        pre-copy); ``{"changed": False}`` when there is nothing to prepare. Never changes the snapshot made."""
        ...

    def snapshot_exists(self, volume: VolumeRef, snap_id: str) -> bool: ...

    def delete_snapshot(self, volume: VolumeRef, snap_id: str) -> None:
        """Idempotent."""
        ...

    def source(self, volume: VolumeRef, snap_id: str) -> SnapshotSource:
        """The snapshot's files, read through the agent."""
        ...

    def target_state(self, path: str) -> dict[str, Any]:
        """``{"exists": bool, "empty": bool}`` of a restore target."""
        ...

    def sink(self, path: str, *, overwrite: bool) -> RestoreSink:
        """A restore target: files are written under ``path`` only, each checked against its digest."""
        ...

    def remove_target(self, path: str) -> None:
        """Remove a partially restored target that this operation created. Idempotent."""
        ...

    def app_status(self, app: AppRef) -> dict[str, Any]: ...

    def recover(self, app: AppRef, *, time: str | None, position: str | None, name: str | None) -> dict[str, Any]:
        ...

    def upgrade(self, data: bytes, sha256: str, filename: str) -> dict[str, Any]:
        """Offer a distribution; the agent checks the hash, installs it and restarts (rolls back on failure)."""
        ...


AgentFactory = Callable[[Host], AgentPort]


class AgentDirectory:
    """Connected agent ports by host (kept open: one TLS session per agent, not one per call), and the
    version each agent reported, remembered for ``version_ttl_s`` so that a check before every call does not
    add a round trip inside a freeze window."""

    def __init__(self, factory: AgentFactory | None = None, version_ttl_s: float = 10.0) -> None:
        self._factory = factory
        self._ports: dict[tuple[str, str | None], AgentPort] = {}
        self._versions: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self.version_ttl_s = version_ttl_s

    def set_factory(self, factory: AgentFactory) -> None:
        self.close()
        self._factory = factory

    def for_host(self, host: Host) -> AgentPort:
        if self._factory is None:
            raise NotFound("no agent client is available in this coordinator (frieze.protocol missing)")
        key = (host.id, host.address)
        with self._lock:
            port = self._ports.get(key)
        if port is None:
            port = self._factory(host)
            with self._lock:
                port = self._ports.setdefault(key, port)
        return port

    def version(self, host: Host) -> str:
        """The agent's version, asked at most every ``version_ttl_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            hit = self._versions.get(host.id)
        if hit is not None and now - hit[0] < self.version_ttl_s:
            return hit[1]
        v = self.for_host(host).version()
        with self._lock:
            self._versions[host.id] = (now, v)
        return v

    def forget(self, host: Host) -> None:
        """Drop the cached port and version of a host (after a transport error, an upgrade)."""
        with self._lock:
            ports = [k for k in self._ports if k[0] == host.id]
            dropped = [self._ports.pop(k) for k in ports]
            self._versions.pop(host.id, None)
        for p in dropped:
            close = getattr(p, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        with self._lock:
            ports, self._ports = list(self._ports.values()), {}
            self._versions.clear()
        for p in ports:
            close = getattr(p, "close", None)
            if close is not None:
                close()


def app_ref(app: App, secrets: dict[str, str] | None = None) -> AppRef:
    return AppRef(id=app.id, name=app.name, kind=app.kind, data_dir=app.data_dir, options=dict(app.options),
                  secrets=secrets or {})


def volume_ref(v: Volume) -> VolumeRef:
    return VolumeRef(id=v.id, name=v.name, path=v.path, provider=v.provider)
