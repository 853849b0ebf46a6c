"""``RemoteAgent``: the coordinator's agent port (``frieze.coordinator.agents.AgentPort``) over the protocol.

Each method submits the call and waits for its task (raising the task's error as its class), so the
coordinator's workflows see the blocking, idempotent calls they expect. Apps and volumes are anything with
the attributes of the coordinator's ``AppRef``/``VolumeRef`` (duck-typed: this package is below the
coordinator); the agent resolves them **by name** in its own host configuration and refuses a call whose
``kind``/``data_dir`` disagree with it.

The coordinator wires it up as::

    ctx = client_context(*ensure_client_tls(cfg.ca_dir).values())   # cert, key, ca
    coord.agents.set_factory(lambda host: RemoteAgent(
        AgentClient(f"https://{host.address}", ctx, expected_cn=host.name), host.name,
        entry_factory=lambda d: FileEntry(**d)))                       # the mover's FileEntry
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from frieze.core.errors import NotFound, NotSupported
from frieze.protocol.client import AgentClient
from frieze.protocol.models import FileEntry, Task


class AppLike(Protocol):
    name: str
    kind: str
    data_dir: str
    secrets: dict[str, str]


class VolumeLike(Protocol):
    name: str


class RemoteSource:
    """A host snapshot as the mover reads it: ``entries()`` and ``read(path)``."""

    def __init__(self, client: AgentClient, volume: str, snap_id: str,
                 entry_factory: Callable[[dict[str, Any]], Any]) -> None:
        self.client, self.volume, self.snap_id, self._mk = client, volume, snap_id, entry_factory

    def entries(self) -> list[Any]:
        return [self._mk(e.model_dump()) for e in self.client.entries(self.volume, self.snap_id)]

    def read(self, path: str) -> Iterator[bytes]:
        return self.client.read_file(self.volume, self.snap_id, path)

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes]:
        """``length`` bytes of ``path`` from ``offset`` (fewer at the end of the file)."""
        return self.client.read_file(self.volume, self.snap_id, path, offset=offset, length=length)

    def changed_since(self, parent_snap_id: str) -> dict[str, list[tuple[int, int]] | None] | None:
        """What changed since the volume's snapshot ``parent_snap_id`` (see ``AgentClient.changed_ranges``),
        or None when the agent cannot tell (its provider has no changed ranges, or the parent is gone): the
        mover then fetches every changed file whole."""
        try:
            return self.client.changed_ranges(self.volume, self.snap_id, parent_snap_id)
        except (NotSupported, NotFound):
            return None


class RemoteSink:
    """A restore target as the mover writes it: ``put(entry, chunks)``; each file checked by its digest."""

    def __init__(self, client: AgentClient, target: str, overwrite: bool) -> None:
        self.client, self.target, self.overwrite = client, target, overwrite

    def put(self, entry: Any, chunks: Iterable[bytes] | None) -> None:
        e = FileEntry(path=entry.path, type=entry.type, size=entry.size, mode=entry.mode, mtime_ns=entry.mtime_ns,
                      digest=entry.digest, target=entry.target, uid=getattr(entry, "uid", None),
                      gid=getattr(entry, "gid", None))
        self.client.put_file(self.target, e, chunks, force=self.overwrite)


class RemoteAgent:
    def __init__(self, client: AgentClient, host: str, *, entry_factory: Callable[[dict[str, Any]], Any] | None = None,
                 timeout: float = 600.0) -> None:
        self.client = client
        self.host = host
        self.timeout = timeout
        self._mk: Callable[[dict[str, Any]], Any] = entry_factory or (lambda d: FileEntry.model_validate(d))

    def _run(self, t: Task) -> Task:
        return self.client.wait(t.id, self.timeout)

    def _result(self, t: Task) -> dict[str, Any]:
        done = self._run(t)
        return {"changed": done.changed, "message": done.message, **(done.result or {})}

    def version(self) -> str:
        return self.client.version().version

    def quiesce(self, app: AppLike, *, epoch: int, lease_s: float) -> dict[str, Any]:
        return self._result(self.client.quiesce(app.name, epoch=epoch, lease_s=lease_s, secrets=dict(app.secrets),
                                                kind=app.kind, data_dir=app.data_dir))

    def unquiesce(self, app: AppLike, *, epoch: int) -> dict[str, Any]:
        return self._result(self.client.unquiesce(app.name, epoch=epoch, secrets=dict(app.secrets)))

    def snapshot(self, volume: VolumeLike, *, snap_id: str, epoch: int) -> dict[str, Any]:
        return self._result(self.client.snapshot(volume.name, snap_id=snap_id, epoch=epoch))

    def prepare_snapshot(self, volume: VolumeLike, snap_id: str) -> dict[str, Any]:
        return self._result(self.client.prepare_snapshot(volume.name, snap_id))

    def snapshot_exists(self, volume: VolumeLike, snap_id: str) -> bool:
        return bool(self._result(self.client.snapshot_exists(volume.name, snap_id)).get("exists"))

    def delete_snapshot(self, volume: VolumeLike, snap_id: str) -> None:
        self._run(self.client.delete_snapshot(volume.name, snap_id))

    def source(self, volume: VolumeLike, snap_id: str) -> RemoteSource:
        return RemoteSource(self.client, volume.name, snap_id, self._mk)

    def target_state(self, path: str) -> dict[str, Any]:
        return self._result(self.client.target_state(path))

    def sink(self, path: str, *, overwrite: bool) -> RemoteSink:
        return RemoteSink(self.client, path, overwrite)

    def remove_target(self, path: str) -> None:
        self._run(self.client.remove_target(path))

    def target_digests(self, path: str) -> dict[str, str]:
        res = self._run(self.client.target_digests(path)).result or {}
        return {str(k): str(v) for k, v in res.get("digests", {}).items()}

    def app_status(self, app: AppLike) -> dict[str, Any]:
        return self._result(self.client.status(app.name, secrets=dict(app.secrets)))

    def recover(self, app: AppLike, *, time: str | None, position: str | None, name: str | None) -> dict[str, Any]:
        return self._result(self.client.recover(app.name, time=time, position=position, name=name,
                                                all_logs=time is None and position is None and name is None,
                                                secrets=dict(app.secrets)))
