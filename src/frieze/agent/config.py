"""The agent's host configuration (``agent.toml``, read with stdlib ``tomllib``): docs/design/agent-protocol.md §7.

Unknown keys are refused at load with the key named. Relative paths are taken relative to the config file's
directory. ``secrets_file`` of an app is a TOML file of ``key = "value"`` (mode 0600 recommended); its values
are merged under the per-call secrets and never logged.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from frieze.core.errors import NotFound, UsageError
from frieze.protocol.models import NAME_RE


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AppConfig(_M):
    kind: str = Field(min_length=1, max_length=32)
    data_dir: str
    volume: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    secrets_file: str | None = None


class VolumeConfig(_M):
    path: str
    provider: str = Field(min_length=1, max_length=32)


class HostConfig(_M):
    name: str = Field(pattern=NAME_RE)
    listen: str = "127.0.0.1:8702"
    state_dir: str
    restore_roots: list[str] = Field(default_factory=list)
    guardian_socket: str | None = None
    install_root: str | None = None
    upgrade_health_timeout_s: float = Field(default=30.0, gt=0)
    #: Where to send heartbeats (default: the coordinator recorded at enrollment); 0 disables them.
    coordinator_url: str | None = None
    heartbeat_s: float = Field(default=10.0, ge=0)
    #: host:port the coordinator should use to reach this agent (default: ``listen``).
    advertise: str | None = None
    apps: dict[str, AppConfig] = Field(default_factory=dict)
    volumes: dict[str, VolumeConfig] = Field(default_factory=dict)

    @field_validator("apps", "volumes")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for k in v:
            if not re.match(NAME_RE, k):
                raise ValueError(f"invalid name {k!r}")
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def state(self) -> Path:
        return Path(self.state_dir)


def _abs(base: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def load(path: Path | str) -> HostConfig:
    """Read and check ``path``; :class:`UsageError` naming the file and the bad key on any problem."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError as e:
        raise NotFound(f"agent config {p} does not exist", path=str(p)) from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"agent config {p} is not valid TOML: {e}", path=str(p)) from e
    try:
        cfg = HostConfig.model_validate(raw)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:5])
        raise UsageError(f"agent config {p}: {errs}", path=str(p)) from e
    base = p.resolve().parent
    cfg.state_dir = _abs(base, cfg.state_dir)
    cfg.restore_roots = [_abs(base, r) for r in cfg.restore_roots]
    if cfg.guardian_socket:
        cfg.guardian_socket = _abs(base, cfg.guardian_socket)
    if cfg.install_root:
        cfg.install_root = _abs(base, cfg.install_root)
    for a in cfg.apps.values():
        a.data_dir = _abs(base, a.data_dir)
        if a.secrets_file:
            a.secrets_file = _abs(base, a.secrets_file)
        if a.volume is not None and a.volume not in cfg.volumes:
            raise UsageError(f"agent config {p}: app volume {a.volume!r} is not a configured volume", path=str(p))
    for v in cfg.volumes.values():
        v.path = _abs(base, v.path)
    return cfg


def read_secrets(app: str, cfg: AppConfig) -> dict[str, str]:
    if not cfg.secrets_file:
        return {}
    try:
        raw = tomllib.loads(Path(cfg.secrets_file).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"secrets file of app {app!r} cannot be read ({type(e).__name__})", app=app) from e
    return {str(k): str(v) for k, v in raw.items()}
