"""``frieze repository ...``: repositories the coordinator writes (its password and S3 keys go to the vault)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from frieze.cli.client import Client, emit, read_secret
from frieze.cli.ops import Json, Server, TokenFile
from frieze.core.errors import UsageError

app = typer.Typer(help="Repositories (the vault).", no_args_is_help=True)


@app.command()
def add(name: str, url: str,
        password_file: Annotated[Path | None, typer.Option(help="file with the password ('-': stdin)")] = None,
        init: Annotated[bool, typer.Option(help="create it (else open it and check the password)")] = False,
        s3_keys_file: Annotated[Path | None, typer.Option(
            help="file with two lines: S3 access key id, secret access key ('-': stdin)")] = None,
        max_concurrent: Annotated[int, typer.Option(help="at most this many backups into it at once")] = 2,
        server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Register a repository (file:///path or s3://...); the coordinator opens it first."""
    body: dict[str, object] = {"name": name, "url": url, "init": init, "max_concurrent": max_concurrent}
    if s3_keys_file is not None:
        body.update(_s3_keys(s3_keys_file))
    body["password"] = read_secret("repository password", password_file)
    emit(Client(server, token_file, timeout=120).post("/repositories", body), json)


def _s3_keys(path: Path) -> dict[str, str]:
    lines = read_secret("S3 keys", path).splitlines()
    if len(lines) < 2 or not lines[0].strip() or not lines[1].strip():
        raise UsageError("the S3 keys file needs two lines: the access key id, then the secret access key")
    return {"s3_access_key_id": lines[0].strip(), "s3_secret_access_key": lines[1].strip()}


@app.command("list")
def list_cmd(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get("/repositories"), json, ["name", "id", "url", "max_concurrent"])


@app.command()
def limit(name: str, max_concurrent: Annotated[int, typer.Argument(help="backups at once")],
          server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Set how many backups may write the repository at once."""
    emit(Client(server, token_file).request("PUT", f"/repositories/{name}/limits",
                                            {"max_concurrent": max_concurrent}), json)


@app.command("rotate-password")
def rotate_password(name: str,
                    password_file: Annotated[Path | None, typer.Option(help="file with the NEW password ('-': stdin)")]
                    = None,
                    server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Change the repository password through its key slots, without stopping anything."""
    pw = read_secret("new repository password", password_file)
    emit(Client(server, token_file, timeout=300).request("PUT", f"/repositories/{name}/password",
                                                         {"password": pw}), json)


@app.command("rotate-s3-keys")
def rotate_s3_keys(name: str,
                   s3_keys_file: Annotated[Path, typer.Option(
                       help="file with two lines: the NEW access key id, secret access key ('-': stdin)")],
                   server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Replace the repository's S3 keys (checked against the repository first); revoke the old ones after."""
    keys = _s3_keys(s3_keys_file)
    emit(Client(server, token_file, timeout=300).request(
        "PUT", f"/repositories/{name}/s3-keys",
        {"access_key_id": keys["s3_access_key_id"], "secret_access_key": keys["s3_secret_access_key"]}), json)
