"""Who holds a quiesce: the freeze guardian (a separate process) when the host config names its socket, else
the plug-in inside the agent process (its in-process watchdog plus the engine's own server-side bounds).

Both give the same contract to :class:`frieze.agent.host.HostService`:

- ``quiesce(spec, epoch, lease_s) -> (changed, info)``: ``changed=False`` when that epoch is already held;
- ``unquiesce(spec, epoch) -> (changed, message, info)``: ``changed=False`` when not quiesced or the lease
  already ran out (``info["lease_expired"]``); a different epoch raises ``StaleEpoch``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from frieze.agent.config import HostConfig
from frieze.core.errors import StaleEpoch, StorageError
from frieze.host.apps.base import AppPlugin, AppSpec, QuiesceHandle

if TYPE_CHECKING:
    from frieze.host.guardian.client import GuardianClient


class Freezer(Protocol):
    def quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float) -> tuple[bool, dict[str, Any]]: ...
    def unquiesce(self, spec: AppSpec, *, epoch: int) -> tuple[bool, str, dict[str, Any]]: ...
    def describe(self) -> dict[str, Any] | None: ...
    def held_epoch(self, app: str) -> int | bool | None: ...
    def is_live(self, app: str) -> bool | None: ...
    def close(self) -> None: ...


class InProcessFreezer:
    """The plug-in holds the quiesce in this process (no guardian configured)."""

    def __init__(self, plugin: Callable[[str], AppPlugin]) -> None:
        self._plugin = plugin
        self._handles: dict[str, QuiesceHandle] = {}
        self._lock = threading.Lock()

    def quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float) -> tuple[bool, dict[str, Any]]:
        h = self._plugin(spec.kind).quiesce(spec, epoch=epoch, lease_s=lease_s)
        with self._lock:
            changed = self._handles.get(spec.name) is not h
            self._handles[spec.name] = h
        return changed, dict(h.info)

    def unquiesce(self, spec: AppSpec, *, epoch: int) -> tuple[bool, str, dict[str, Any]]:
        r = self._plugin(spec.kind).unquiesce(spec, epoch=epoch)
        return r.changed, r.message, dict(r.info)

    def describe(self) -> dict[str, Any] | None:
        return None

    def held_epoch(self, app: str) -> int | bool | None:
        """False: the plug-in's own status is authoritative (held in this process)."""
        return False

    def is_live(self, app: str) -> bool | None:
        return None  # cannot tell without the spec; files/script freezes are never held in this process

    def close(self) -> None:
        pass


class GuardianFreezer:
    """The freeze guardian holds the quiesce (:class:`frieze.host.guardian.client.GuardianClient`, one
    connection for the agent's lifetime): the plug-in's session lives in the guardian's process, which thaws
    when the lease runs out or as soon as this agent's connection closes (the agent died)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._client: GuardianClient | None = None
        self._held: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def _conn(self) -> GuardianClient:
        from frieze.host.guardian.client import GuardianClient

        with self._lock:
            if self._client is None:
                self._client = GuardianClient(self.socket_path)
                self._held.clear()  # a new connection owns nothing: the old one's freezes were thawed
            return self._client

    def _drop(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
            self._client = None

    def quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float) -> tuple[bool, dict[str, Any]]:
        try:
            fi = self._conn().quiesce_app(spec, lease_s, epoch)
        except StorageError:
            self._drop()  # the guardian went away (and thawed what this connection held); one retry
            fi = self._conn().quiesce_app(spec, lease_s, epoch)
        with self._lock:
            cur = self._held.get(spec.name)
            changed = cur is None or cur[1] != fi.freeze_id
            self._held[spec.name] = (epoch, fi.freeze_id)
        return changed, {"freeze_id": fi.freeze_id, "quiesce_ms": fi.frozen_ms, **fi.info}

    def unquiesce(self, spec: AppSpec, *, epoch: int) -> tuple[bool, str, dict[str, Any]]:
        with self._lock:
            cur = self._held.get(spec.name)
        if cur is None:
            return False, f"app {spec.name!r} is not quiesced", {}
        if cur[0] != epoch:
            raise StaleEpoch(f"epoch {epoch} is not the current quiesce epoch {cur[0]} of app {spec.name!r}",
                             app=spec.name, epoch=epoch)
        tr = self._conn().thaw_result(cur[1], epoch)
        with self._lock:
            self._held.pop(spec.name, None)
        info = {"held_ms": tr.window_ms, "reason": tr.reason, **tr.info}
        if tr.reason == "lease_expired":
            info["lease_expired"] = True
            return False, f"the lease of app {spec.name!r} (epoch {epoch}) ran out; the guardian had thawed it", info
        if not tr.changed:
            return False, f"app {spec.name!r} was already thawed ({tr.reason})", info
        return True, f"app {spec.name!r} unquiesced by the guardian (epoch {epoch})", info

    def describe(self) -> dict[str, Any] | None:
        return {"socket": self.socket_path}

    def is_live(self, app: str) -> bool | None:
        """Does the guardian still hold a freeze of ``app`` (None: the guardian cannot be asked)?"""
        try:
            return f"app:{app}" in self._conn().status().get("live", [])
        except Exception:
            return None

    def held_epoch(self, app: str) -> int | bool | None:
        with self._lock:
            cur = self._held.get(app)
        return cur[0] if cur is not None else None

    def close(self) -> None:
        self._drop()


def make_freezer(cfg: HostConfig, plugin: Callable[[str], AppPlugin]) -> Freezer:
    if cfg.guardian_socket:
        return GuardianFreezer(cfg.guardian_socket)
    return InProcessFreezer(plugin)
