"""``frieze rp ...``: restore points with their consistency labels and freeze windows."""

from __future__ import annotations

from typing import Annotated

import typer

from frieze.cli.client import Client, emit
from frieze.cli.ops import Json, Server, TokenFile

app = typer.Typer(help="Restore points.", no_args_is_help=True)


@app.command("list")
def list_cmd(protection_set: Annotated[str | None, typer.Option(help="only this protection set")] = None,
             server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get("/restore-points", protection_set=protection_set), json,
         ["id", "created_at", "consistency", "bytes_total", "bytes_new", "freeze_epoch"])


@app.command()
def show(rp_id: str, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get(f"/restore-points/{rp_id}"), json)


@app.command()
def ls(rp_id: str, path: Annotated[str, typer.Argument(help="path relative to the volume")] = "",
       volume: Annotated[str | None, typer.Option(help="which volume of the restore point")] = None,
       recursive: Annotated[bool, typer.Option("-r", "--recursive")] = False,
       server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Browse a restore point through the coordinator."""
    emit(Client(server, token_file).get(f"/restore-points/{rp_id}/files", path=path, volume=volume,
                                        recursive=str(recursive).lower()), json,
         ["path", "type", "mode", "size", "mtime"])


@app.command()
def cat(rp_id: str, path: str, volume: Annotated[str | None, typer.Option(help="which volume")] = None,
        server: Server = None, token_file: TokenFile = None) -> None:
    """Write one file of a restore point to stdout (every byte authenticated by the repository)."""
    import sys

    data = Client(server, token_file, timeout=600).get(f"/restore-points/{rp_id}/content", path=path, volume=volume)
    sys.stdout.buffer.write(data if isinstance(data, bytes) else str(data).encode())
