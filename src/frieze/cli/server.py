"""``frieze server ...``: run the coordinator, print its OpenAPI spec.

The server itself lives in :mod:`frieze.api.server` (the CLI and the API are sibling layers and do not
import each other): this command replaces the current process with ``python -m frieze.api.server`` (same
pid, so signals reach the coordinator directly).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

app = typer.Typer(help="The coordinator: REST API, workflows, scheduler, mover.", no_args_is_help=True)


def _exec(*args: str) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "frieze.api.server", *args])


@app.command("run")
def run(
    state_dir: Annotated[Path, typer.Option("--state-dir", help="where the catalog, keys and engine state live")]
    = Path(".frieze"),
    host: Annotated[str, typer.Option(help="listen address (API and agent port)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port (API tokens)")] = 8700,
    agent_port: Annotated[int, typer.Option(help="agent port (mutual TLS); 0 to disable")] = 8701,
    agent_host: Annotated[str | None, typer.Option(help="listen address of the agent port (default: --host)")]
    = None,
    heartbeat_timeout: Annotated[float, typer.Option(help="seconds of silence before a host is offline")] = 30.0,
    agent_port_san: Annotated[list[str] | None, typer.Option(
        help="DNS name or IP agents use for the agent port (repeat; put in its certificate)")] = None,
    catalog_url: Annotated[str | None, typer.Option(help="catalog database URL (default: SQLite in state dir)")]
    = None,
    engine_url: Annotated[str | None, typer.Option(help="engine database URL (default: SQLite in state dir)")]
    = None,
    executor_id: Annotated[str, typer.Option(help="stable id of this coordinator")] = "coord-1",
    no_scheduler: Annotated[bool, typer.Option("--no-scheduler", help="do not start scheduled backups")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    min_agent_version: Annotated[str, typer.Option(help="older agents are upgraded (or refused) first")] = "0.1.0",
    agent_dist: Annotated[Path | None, typer.Option(help="wheel/sdist of frieze offered to older agents")] = None,
    api_tls_cert: Annotated[Path | None, typer.Option(help="serve the API over HTTPS: certificate file")] = None,
    api_tls_key: Annotated[Path | None, typer.Option(help="serve the API over HTTPS: key file")] = None,
    repository_root: Annotated[list[Path] | None, typer.Option(
        help="file repositories must lie under this directory (repeat; default: anywhere)")] = None,
    scheduler_interval: Annotated[float, typer.Option(help="seconds between scheduler passes")] = 5.0,
) -> None:
    """Run a coordinator until SIGTERM/SIGINT. The first start writes an admin token to
    <state-dir>/admin.token (mode 0600); it is never printed."""
    args = ["run", "--state-dir", str(state_dir), "--host", host, "--port", str(port), "--agent-port",
            str(agent_port), "--executor-id", executor_id, "--log-level", log_level]
    if catalog_url:
        args += ["--catalog-url", catalog_url]
    if engine_url:
        args += ["--engine-url", engine_url]
    if no_scheduler:
        args.append("--no-scheduler")
    args += ["--min-agent-version", min_agent_version]
    if agent_dist is not None:
        args += ["--agent-dist", str(agent_dist.resolve())]
    if api_tls_cert is not None:
        args += ["--api-tls-cert", str(api_tls_cert.resolve())]
    if api_tls_key is not None:
        args += ["--api-tls-key", str(api_tls_key.resolve())]
    for root in repository_root or []:
        args += ["--repository-root", str(root.resolve())]
    args += ["--scheduler-interval", str(scheduler_interval), "--heartbeat-timeout", str(heartbeat_timeout)]
    if agent_host:
        args += ["--agent-host", agent_host]
    for san in agent_port_san or []:
        args += ["--agent-port-san", san]
    _exec(*args)


@app.command("openapi")
def openapi() -> None:
    """Print the OpenAPI 3.1 document of the REST API."""
    _exec("openapi")
