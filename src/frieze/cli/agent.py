"""``frieze agent ...``: run the per-host agent daemon, enroll it with a coordinator.

The one-time enrollment token is read from a file or stdin (``--token-file -``), never from the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The per-host agent: mutual-TLS API for the coordinator.", no_args_is_help=True)


@app.command("run")
def run(config: Annotated[Path, typer.Option("--config", help="the host configuration (agent.toml)")]) -> None:
    """Run the agent until SIGTERM/SIGINT (under its upgrade supervisor when install_root is configured)."""
    from frieze.agent.daemon import run as run_daemon

    raise typer.Exit(run_daemon(config))


@app.command("enroll")
def enroll(
    coordinator: Annotated[str, typer.Option(help="the coordinator's agent port, e.g. https://coord:8701")],
    token_file: Annotated[str, typer.Option(help="file holding the one-time token, or - to read stdin")],
    state_dir: Annotated[Path, typer.Option(help="where the agent keeps its key and certificates")],
    name: Annotated[str, typer.Option(help="this host's registered name")],
    ca_fingerprint: Annotated[str | None, typer.Option(help="SHA-256 of the coordinator CA certificate")] = None,
    ca_file: Annotated[Path | None, typer.Option(help="the coordinator CA certificate (instead of fetching)")]
    = None,
    san: Annotated[list[str] | None, typer.Option(help="extra DNS name or IP for the agent's certificate")] = None,
    address: Annotated[str | None, typer.Option(help="host:port where the coordinator reaches this agent")] = None,
) -> None:
    """Enroll this host's agent with a coordinator using a one-time token."""
    from frieze.agent.daemon import read_token
    from frieze.agent.enroll import enroll as do_enroll

    out = do_enroll(coordinator, read_token(token_file), state_dir, name, ca_fingerprint=ca_fingerprint,
                    ca_file=ca_file, sans=san or [], address=address)
    typer.echo(json.dumps(out))
