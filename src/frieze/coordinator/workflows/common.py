"""Helpers the workflow tasks share: the running coordinator, agents by host, refs with their secrets."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from frieze.coordinator import context
from frieze.coordinator.agents import AgentPort, AppRef, VolumeRef, app_ref, volume_ref
from frieze.coordinator.catalog.models import App, Host, Volume
from frieze.coordinator.registry import version_ok
from frieze.coordinator.service import Coordinator
from frieze.core.errors import FriezeError, InternalError, NotFound

T = TypeVar("T")


def coord() -> Coordinator:
    return context.current()


def host_row(host_id: str) -> Host:
    with coord().catalog.session() as s:
        h = s.get(Host, host_id)
        if h is None:
            raise NotFound(f"host {host_id!r} does not exist", host=host_id)
        s.expunge(h)
        return h


def agent(host_id: str) -> AgentPort:
    """A connected agent for ``host_id`` after the registry's checks (maintenance, version)."""
    c = coord()
    h = host_row(host_id)
    c.registry.check_callable(h)
    try:
        port = c.agents.for_host(h)
        v = c.agents.version(h)
        if not version_ok(v, c.config.min_agent_version) and c.config.agent_dist is not None:
            c.upgrade_agent(h, v)
            port = c.agents.for_host(h)
            v = c.agents.version(h)
        c.registry.check_callable(h, v)
    except FriezeError as e:
        if e.retryable:
            c.agents.forget(h)
        raise
    return port


def app(app_id: str, *, with_secrets: bool = False) -> tuple[AppRef, str]:
    """(the app's ref, its host id). Secrets are read from the vault only when asked for."""
    c = coord()
    with c.catalog.session() as s:
        a = s.get(App, app_id)
        if a is None:
            raise NotFound(f"app {app_id!r} does not exist", app=app_id)
        refs = dict(a.secret_refs)
        host_id = a.host_id
        ref = app_ref(a)
    if with_secrets and refs:
        ref = AppRef(id=ref.id, name=ref.name, kind=ref.kind, data_dir=ref.data_dir, options=ref.options,
                     secrets={k: c.secrets.get(v).reveal() for k, v in refs.items()})
    return ref, host_id


def volume(volume_id: str) -> tuple[VolumeRef, str]:
    with coord().catalog.session() as s:
        v = s.get(Volume, volume_id)
        if v is None:
            raise NotFound(f"volume {volume_id!r} does not exist", volume=volume_id)
        return volume_ref(v), v.host_id


def parallel(items: list[T], fn: Callable[[T], Any], *,
             max_workers: int = 8) -> list[tuple[T, Any, BaseException | None]]:
    """Run ``fn`` on every item at once (a barrier): [(item, result, error)] in the items' order."""
    if not items:
        return []
    out: list[tuple[T, Any, BaseException | None]] = []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        futs = [pool.submit(fn, it) for it in items]
        for it, f in zip(items, futs, strict=True):
            try:
                out.append((it, f.result(), None))
            except BaseException as e:
                out.append((it, None, e))
    return out


def first_error(results: list[tuple[Any, Any, BaseException | None]]) -> FriezeError | None:
    for _it, _r, e in results:
        if e is not None:
            return e if isinstance(e, FriezeError) else InternalError(f"{type(e).__name__} in a parallel call")
    return None
