"""``frieze repository ...``: repositories the coordinator writes (its password and S3 keys go to the vault)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frieze.cli.client import Client, emit, read_secret
from frieze.cli.ops import Json, Server, TokenFile

app = typer.Typer(help="Repositories (the vault).", no_args_is_help=True)


@app.command()
def add(name: str, url: str,
        password_file: Annotated[Path | None, typer.Option(help="file with the password ('-': stdin)")] = None,
        init: Annotated[bool, typer.Option(help="create it (else open it and check the password)")] = False,
        server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Register a repository (file:///path or s3://...); the coordinator opens it first."""
    pw = read_secret("repository password", password_file)
    emit(Client(server, token_file, timeout=120).post("/repositories", {"name": name, "url": url, "password": pw,
                                                                        "init": init}), json)


@app.command("list")
def list_cmd(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get("/repositories"), json, ["name", "id", "url"])
