"""``frieze pset ...``: protection sets (apps and volumes captured at one consistent instant)."""

from __future__ import annotations

from typing import Annotated

import typer

from frieze.cli.client import Client, emit
from frieze.cli.ops import Json, Server, TokenFile

app = typer.Typer(help="Protection sets.", no_args_is_help=True)


@app.command()
def add(name: str, app_ref: Annotated[list[str] | None, typer.Option("--app", help="app (repeat)")] = None,
        volume: Annotated[list[str] | None, typer.Option("--volume", help="volume (repeat)")] = None,
        server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Create a protection set."""
    emit(Client(server, token_file).post("/protection-sets", {"name": name, "apps": app_ref or [],
                                                              "volumes": volume or []}), json)


@app.command("list")
def list_cmd(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get("/protection-sets"), json, ["name", "id", "app_ids", "volume_ids"])
