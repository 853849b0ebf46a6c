"""``frieze host ...``: register hosts (prints the one-time enrollment token), list, maintenance."""

from __future__ import annotations

from typing import Annotated

import typer

from frieze.cli.client import Client, emit
from frieze.cli.ops import Json, Server, TokenFile

app = typer.Typer(help="Hosts and their agents.", no_args_is_help=True)
COLUMNS = ["name", "id", "state", "agent_version", "address", "last_heartbeat", "max_concurrent"]
MaxConcurrent = Annotated[int, typer.Option(help="at most this many backups touching it at once")]


@app.command()
def add(name: str, address: Annotated[str | None, typer.Option(help="https://host:port of its agent")] = None,
        max_concurrent: MaxConcurrent = 2,
        server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Register a host; prints its one-time enrollment token (for `frieze agent enroll`)."""
    emit(Client(server, token_file).post("/hosts", {"name": name, "address": address,
                                                    "max_concurrent": max_concurrent}), json)


@app.command()
def show(name: str, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """One host, with its state and agent version."""
    emit(Client(server, token_file).get(f"/hosts/{name}"), json)


@app.command()
def limit(name: str, max_concurrent: Annotated[int, typer.Argument(help="backups at once")],
          server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Set how many backups may touch the host at once."""
    emit(Client(server, token_file).request("PUT", f"/hosts/{name}/limits", {"max_concurrent": max_concurrent}),
         json)


@app.command("list")
def list_cmd(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """List hosts with their state (pending, online, offline, maintenance)."""
    emit(Client(server, token_file).get("/hosts"), json, COLUMNS)


@app.command()
def maintenance(name: str, on: Annotated[bool, typer.Option("--on/--off")] = True,
                server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Put a host in (or out of) maintenance: no operation is sent to it meanwhile."""
    emit(Client(server, token_file).request("PUT", f"/hosts/{name}/maintenance", {"maintenance": on}), json)


@app.command()
def token(name: str, ttl: Annotated[float, typer.Option(help="seconds the token stays valid")] = 3600.0,
          server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Issue a new one-time enrollment token for a registered host (e.g. after its first one expired)."""
    emit(Client(server, token_file).post(f"/hosts/{name}/enrollment-token", {"ttl_s": ttl}), json)
