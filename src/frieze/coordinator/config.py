"""The coordinator's configuration and the layout of its state directory.

Everything comes from the command line or a TOML-free plain object; nothing secret is read from the
environment. State directory layout (created 0700)::

    <state>/catalog.sqlite      the catalog (SQLAlchemy + Alembic)
    <state>/engine.sqlite       the workflow engine's DBOS system database (separate file)
    <state>/master.key          the vault's master keys (0600)
    <state>/admin.token         the bootstrap admin token, written once at first start (0600)
    <state>/ca/                 the CA that signs agent certificates, and the server's agent-port cert
    <state>/staging/            the mover's per-volume mirrors of host data
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CoordinatorConfig:
    state_dir: Path
    #: API listener (tokens). Plain HTTP on loopback by default.
    host: str = "127.0.0.1"
    port: int = 8700
    #: TLS for the API listener (certificate and key files); None: plain HTTP (keep it on loopback then).
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    #: Agent listener (mutual TLS: enrollment with a one-time token, then heartbeats by certificate).
    agent_port: int = 8701
    #: listen address of the agent port (None: the API's ``host``), e.g. the address agents on other
    #: machines or network namespaces reach while the API stays on loopback
    agent_host: str | None = None
    #: further DNS names / IP addresses agents use to reach the agent port (its certificate names them)
    agent_port_sans: list[str] = field(default_factory=list)
    catalog_url: str | None = None
    engine_url: str | None = None
    executor_id: str = "coord-1"
    #: Hosts not heard from for this long are marked offline.
    heartbeat_timeout_s: float = 30.0
    #: Minimum agent version; older agents are upgraded before any call (see registry.py).
    min_agent_version: str = "0.1.0"
    #: A wheel or sdist of frieze offered to agents older than ``min_agent_version`` before any call.
    agent_dist: Path | None = None
    #: file repositories must lie under one of these directories (empty: any absolute path); S3 is unaffected
    repository_roots: list[Path] = field(default_factory=list)
    scheduler: bool = True
    #: seconds between scheduler passes (ticks due, orphaned claims, agent probes)
    scheduler_interval_s: float = 5.0
    #: a claimed tick without an operation for this long is taken over (its winner died before submitting)
    orphan_after_s: float = 60.0
    extra: dict[str, str] = field(default_factory=dict)
    #: Called by the engine after each durable checkpoint: ``hook(op_id, checkpoint)`` (fault tests).
    on_checkpoint: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.repository_roots = [Path(p).resolve() for p in self.repository_roots]

    @property
    def catalog(self) -> str:
        return self.catalog_url or f"sqlite:///{self.state_dir / 'catalog.sqlite'}"

    @property
    def engine(self) -> str:
        return self.engine_url or f"sqlite:///{self.state_dir / 'engine.sqlite'}"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "master.key"

    @property
    def admin_token_file(self) -> Path:
        return self.state_dir / "admin.token"

    @property
    def ca_dir(self) -> Path:
        return self.state_dir / "ca"

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    def ensure_dirs(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        for d in (self.ca_dir, self.staging_dir):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o700)
