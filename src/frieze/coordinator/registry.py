"""The agent registry: hosts, one-time enrollment tokens, heartbeats, state and version checks.

States: ``pending`` (registered, not enrolled), ``online`` (heartbeat within ``heartbeat_timeout_s``),
``offline`` (silent longer), ``maintenance`` (set by an operator; no operation is sent to the host).
Before each call to an agent the coordinator checks the version the agent reported against
``min_agent_version`` (:meth:`Registry.check_callable`); an older agent is refused with a clear error
naming the host and both versions (the upgrade itself is the agent's `upgrade` call, see agent-protocol.md).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from frieze.coordinator.catalog.db import Catalog
from frieze.coordinator.catalog.models import EnrollmentToken, Host
from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.resources import Resources, host_view
from frieze.core.clock import now
from frieze.core.errors import AuthError, Conflict, NotFound


def _ver(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split("-")[0].split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


def version_ok(have: str | None, need: str) -> bool:
    return have is not None and _ver(have) >= _ver(need)


class Registry:
    def __init__(self, catalog: Catalog, config: CoordinatorConfig) -> None:
        self.catalog = catalog
        self.config = config

    def close(self) -> None:
        pass

    def create_host(self, resources: Resources, name: str, address: str | None,
                    max_concurrent: int = 2) -> tuple[dict[str, Any], str]:
        """Register a host; returns its view and a one-time enrollment token (only its hash is kept)."""
        token = "enr_" + secrets.token_urlsafe(24)
        view = resources.create_host(name, address, hashlib.sha256(token.encode()).hexdigest(),
                                     max_concurrent=max_concurrent)
        return view, token

    def new_enrollment_token(self, host_ref: str, ttl_s: float = 3600.0) -> str:
        token = "enr_" + secrets.token_urlsafe(24)
        with self.catalog.session() as s:
            h = s.scalar(select(Host).where((Host.id == host_ref) | (Host.name == host_ref)))
            if h is None:
                raise NotFound(f"host {host_ref!r} does not exist", host=host_ref)
            s.add(EnrollmentToken(id="enr-" + secrets.token_hex(8), host_id=h.id,
                                  token_hash=hashlib.sha256(token.encode()).hexdigest(),
                                  expires_at=now() + timedelta(seconds=ttl_s)))
        return token

    def redeem(self, token: str, address: str | None, version: str | None) -> dict[str, Any]:
        """Use a one-time enrollment token (once). Returns the host's view; AuthError if not valid."""
        h = hashlib.sha256(token.encode()).hexdigest()
        with self.catalog.session() as s:
            rec = s.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == h))
            if rec is None or rec.used or rec.expires_at.replace(tzinfo=now().tzinfo) < now():
                raise AuthError("the enrollment token is not valid (unknown, used or expired)")
            rec.used = True
            host = s.get(Host, rec.host_id)
            assert host is not None
            if address:
                host.address = address
            host.agent_version = version
            host.state = "maintenance" if host.maintenance else "online"
            host.last_heartbeat = now()
            return host_view(host)

    def set_fingerprint(self, host_id: str, fingerprint: str) -> None:
        with self.catalog.session() as s:
            host = s.get(Host, host_id)
            if host is not None:
                host.cert_fingerprint = fingerprint

    def heartbeat(self, host_name: str, fingerprint: str | None, version: str | None,
                  address: str | None = None) -> dict[str, Any]:
        """Record a heartbeat from the agent whose certificate names ``host_name``."""
        with self.catalog.session() as s:
            host = s.scalar(select(Host).where(Host.name == host_name))
            if host is None:
                raise NotFound(f"host {host_name!r} is not registered", host=host_name)
            if host.cert_fingerprint and fingerprint and host.cert_fingerprint != fingerprint:
                raise AuthError(f"certificate of host {host_name!r} is not the one it enrolled with")
            host.last_heartbeat = now()
            if version:
                host.agent_version = version
            if address:
                host.address = address
            host.state = "maintenance" if host.maintenance else "online"
            return host_view(host)

    def probe(self, port_for: Any) -> None:
        """The coordinator's side of heartbeats: ask every enrolled agent (not in maintenance) for its version;
        an answer is a heartbeat (online, version recorded), silence past the timeout makes it offline."""
        with self.catalog.session() as s:
            hosts = [h for h in s.scalars(select(Host).where(Host.address.is_not(None), Host.maintenance.is_(False)))]
            for h in hosts:
                s.expunge(h)
        for h in hosts:
            try:
                v = port_for(h).version()
            except Exception:  # unreachable or refusing: refresh_states marks it offline in time
                continue
            self.heartbeat(h.name, None, v)
        self.refresh_states()

    def refresh_states(self) -> None:
        """Mark hosts silent for longer than the timeout offline."""
        limit = now() - timedelta(seconds=self.config.heartbeat_timeout_s)
        with self.catalog.session() as s:
            for host in s.scalars(select(Host).where(Host.state == "online")):
                hb = host.last_heartbeat
                if hb is not None and hb.replace(tzinfo=limit.tzinfo) < limit:
                    host.state = "offline"

    def check_callable(self, host: Host, agent_version: str | None = None) -> None:
        """Refuse a call to a host in maintenance or not enrolled, or whose agent is too old."""
        if host.maintenance:
            raise Conflict(f"host {host.name!r} is in maintenance", host=host.name)
        if host.address is None:
            raise Conflict(f"host {host.name!r} has not enrolled an agent yet", host=host.name)
        v = agent_version or host.agent_version
        if not version_ok(v, self.config.min_agent_version):
            raise Conflict(f"agent on host {host.name!r} is version {v}, older than the required "
                           f"{self.config.min_agent_version}; upgrade it first", host=host.name, version=v)
