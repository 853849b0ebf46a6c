"""``frieze token ...``: API tokens (admin, operator, read-only) and vault key rotation."""

from __future__ import annotations

from typing import Annotated

import typer

from frieze.cli.client import Client, emit
from frieze.cli.ops import Json, Server, TokenFile

app = typer.Typer(help="API tokens and the vault key.", no_args_is_help=True)


@app.command()
def create(name: str, role: Annotated[str, typer.Option(help="admin, operator, read-only")] = "operator",
           server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Create a token; it is shown once (only its hash is kept)."""
    emit(Client(server, token_file).post("/tokens", {"name": name, "role": role}), json)


@app.command("list")
def list_cmd(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get("/tokens"), json, ["id", "name", "role", "created_at", "revoked"])


@app.command()
def revoke(token_id: str, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    Client(server, token_file).request("DELETE", f"/tokens/{token_id}")
    emit({"revoked": token_id}, json)


@app.command("rotate-vault-key")
def rotate(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Re-encrypt every stored secret under a new vault key (no downtime), then retire the old key."""
    emit(Client(server, token_file).post("/vault/rotate"), json)
