"""``frieze volume ...``: where an app's data lives, with its snapshot provider."""

from __future__ import annotations

from typing import Annotated

import typer

from frieze.cli.client import Client, emit
from frieze.cli.ops import Json, Server, TokenFile

app = typer.Typer(help="Volumes (a directory on a host, with its snapshot provider).", no_args_is_help=True)


@app.command()
def add(host: str, name: str, path: str,
        provider: Annotated[str, typer.Option(help="btrfs, reflink, copy, helper")] = "copy",
        server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Register a volume on a host."""
    emit(Client(server, token_file).post("/volumes", {"host": host, "name": name, "path": path,
                                                      "provider": provider}), json)


@app.command("list")
def list_cmd(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get("/volumes"), json, ["name", "id", "host_id", "path", "provider"])
