"""Running the coordinator: the API listener and the agent listener (mutual TLS) in one process.

``python -m frieze.api.server run --state-dir D [--host H] [--port P] [--agent-port A] ...`` (what
``frieze server run`` executes) and ``python -m frieze.api.server openapi`` (the OpenAPI 3.1 document).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from frieze.api.app import create_app
from frieze.api.tls import MTLSH11Protocol
from frieze.coordinator import logs
from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.service import Coordinator


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: one handler stops every listener of the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(cfg: CoordinatorConfig, log_level: str = "info") -> None:
    """Run a coordinator until SIGTERM/SIGINT. The first start writes an admin token to
    ``<state-dir>/admin.token`` (0600); it is never printed or logged."""
    logs.configure(log_level)
    coord = Coordinator(cfg)
    tls_on = cfg.api_tls_cert is not None and cfg.api_tls_key is not None
    servers = [_Server(uvicorn.Config(create_app(coord), host=cfg.host, port=cfg.port, http="h11",
                                      log_config=None, timeout_graceful_shutdown=3, lifespan="off",
                                      ssl_certfile=str(cfg.api_tls_cert) if tls_on else None,
                                      ssl_keyfile=str(cfg.api_tls_key) if tls_on else None))]
    tls = coord.agent_tls() if cfg.agent_port else None
    if tls is not None:
        servers.append(_Server(uvicorn.Config(
            create_app(coord, agent_only=True), host=cfg.agent_host or cfg.host, port=cfg.agent_port,
            http=MTLSH11Protocol,
            log_config=None, ssl_certfile=str(tls["cert"]), ssl_keyfile=str(tls["key"]),
            ssl_ca_certs=str(tls["ca"]), ssl_cert_reqs=ssl.CERT_OPTIONAL, timeout_graceful_shutdown=3,
            lifespan="off")))

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for s in servers:
                s.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await asyncio.gather(*(s.serve() for s in servers))

    try:
        asyncio.run(main())
    finally:
        coord.close()


def openapi_document() -> dict[str, object]:
    """The OpenAPI document of the REST API (needs no state: a throwaway one is used)."""
    with tempfile.TemporaryDirectory() as d:
        coord = Coordinator(CoordinatorConfig(state_dir=Path(d), scheduler=False), start_engine=False)
        try:
            return create_app(coord).openapi()
        finally:
            coord.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="frieze server")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--state-dir", type=Path, default=Path(".frieze"))
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8700)
    r.add_argument("--agent-port", type=int, default=8701)
    r.add_argument("--agent-host", help="listen address of the agent port (default: --host)")
    r.add_argument("--agent-port-san", action="append", default=[],
                   help="a DNS name or IP address agents use for the agent port (repeat; in its certificate)")
    r.add_argument("--heartbeat-timeout", type=float, default=30.0,
                   help="seconds of silence after which a host is offline")
    r.add_argument("--catalog-url")
    r.add_argument("--engine-url")
    r.add_argument("--executor-id", default="coord-1")
    r.add_argument("--no-scheduler", action="store_true")
    r.add_argument("--log-level", default="info")
    r.add_argument("--min-agent-version", default="0.1.0")
    r.add_argument("--api-tls-cert", type=Path, help="serve the API over HTTPS with this certificate")
    r.add_argument("--api-tls-key", type=Path, help="... and this key file")
    r.add_argument("--agent-dist", type=Path, help="wheel/sdist offered to older agents before any call")
    r.add_argument("--repository-root", type=Path, action="append", default=[],
                   help="file repositories must lie under this directory (repeat; default: anywhere)")
    r.add_argument("--scheduler-interval", type=float, default=5.0, help="seconds between scheduler passes")
    sub.add_parser("openapi")
    a = p.parse_args(argv)
    if a.cmd == "run" and (a.api_tls_cert is None) != (a.api_tls_key is None):
        p.error("--api-tls-cert and --api-tls-key go together")
    if a.cmd == "openapi":
        logs.configure("warning")
        sys.stdout.write(json.dumps(openapi_document(), indent=1) + "\n")
        return 0
    from frieze.core.memtune import tune_gc, tune_malloc

    tune_malloc()  # the mover runs the repository's data path in this process
    tune_gc()
    serve(CoordinatorConfig(state_dir=a.state_dir, host=a.host, port=a.port, agent_port=a.agent_port,
                            catalog_url=a.catalog_url, engine_url=a.engine_url, executor_id=a.executor_id,
                            scheduler=not a.no_scheduler, min_agent_version=a.min_agent_version,
                            agent_dist=a.agent_dist, api_tls_cert=a.api_tls_cert, api_tls_key=a.api_tls_key,
                            repository_roots=list(a.repository_root), scheduler_interval_s=a.scheduler_interval,
                            agent_host=a.agent_host, heartbeat_timeout_s=a.heartbeat_timeout,
                            agent_port_sans=list(a.agent_port_san)),
          a.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
