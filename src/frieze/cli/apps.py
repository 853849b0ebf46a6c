"""``frieze app ...``: applications on hosts (postgres, mariadb, sqlite, redis, files, script)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frieze.cli.client import Client, emit, read_secret
from frieze.cli.ops import Json, Server, TokenFile

app = typer.Typer(help="Applications.", no_args_is_help=True)


@app.command()
def add(host: str, name: str, kind: str, data_dir: str,
        volume: Annotated[str | None, typer.Option(help="the volume holding data_dir")] = None,
        option: Annotated[list[str] | None, typer.Option("--option", "-o", help="key=value (repeat)")] = None,
        password_file: Annotated[Path | None, typer.Option(help="file with the app's password ('-': stdin)")]
        = None,
        server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Register an app; its password (if any) goes to the coordinator's vault."""
    opts = dict(o.split("=", 1) for o in (option or []) if "=" in o)
    secrets = {"password": read_secret("app password", password_file)} if password_file else {}
    emit(Client(server, token_file).post("/apps", {"host": host, "name": name, "kind": kind, "data_dir": data_dir,
                                                   "volume": volume, "options": opts, "secrets": secrets}), json)


@app.command("list")
def list_cmd(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get("/apps"), json, ["name", "id", "kind", "host_id", "data_dir", "volume_id"])


@app.command("set-password")
def set_password(app_ref: Annotated[str, typer.Argument(metavar="APP", help="app name or id")],
                 password_file: Annotated[Path | None, typer.Option(help="file with the NEW password ('-': stdin)")]
                 = None,
                 host: Annotated[str | None, typer.Option(help="host of the app")] = None,
                 verify: Annotated[bool, typer.Option(help="check through the agent that it works first")] = True,
                 server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Rotate an app's password in the vault (after changing it in the engine); checked through its agent."""
    pw = read_secret("new app password", password_file)
    emit(Client(server, token_file, timeout=120).request("PUT", f"/apps/{app_ref}/secrets",
                                                         {"secrets": {"password": pw}, "host": host,
                                                          "verify": verify}), json)
