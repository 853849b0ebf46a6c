"""The coordinator's CA for agents: where it lives and the agent port's TLS material.

The CA itself (key generation, CSR signing) is :mod:`frieze.protocol`'s; this module only places it in the
coordinator's state directory (``<state>/ca``, 0700) and returns the paths uvicorn needs. Returns None
when frieze.protocol provides no CA yet (the agent port is then not started).
"""

from __future__ import annotations

from pathlib import Path

from frieze.coordinator.config import CoordinatorConfig


def agent_port_tls(config: CoordinatorConfig) -> dict[str, Path] | None:
    """{"cert", "key", "ca"} of the agent port's server certificate (made with the CA on first use)."""
    try:
        from frieze.protocol.ca import ensure_server_tls
    except ImportError:
        return None
    names = [config.host, "localhost"]
    if config.agent_host and config.agent_host not in names and config.agent_host not in ("0.0.0.0", "::"):
        names.append(config.agent_host)
    names += [n for n in config.agent_port_sans if n not in names]
    return ensure_server_tls(config.ca_dir, hostnames=names)
