"""``frieze policy ...``: schedule (cron in a time zone), consistency, retention, target repository."""

from __future__ import annotations

from typing import Annotated

import typer

from frieze.cli.client import Client, emit
from frieze.cli.ops import Json, Server, TokenFile

app = typer.Typer(help="Policies.", no_args_is_help=True)


@app.command()
def add(name: str, protection_set: str, repository: str,
        cron: Annotated[str | None, typer.Option(help="five-field cron, e.g. '0 2 * * *'")] = None,
        timezone: Annotated[str, typer.Option(help="IANA time zone of the cron")] = "UTC",
        consistency: Annotated[str, typer.Option(help="application or crash")] = "application",
        on_quiesce_failure: Annotated[str, typer.Option(help="abort or continue")] = "abort",
        keep_last: Annotated[int | None, typer.Option(help="retention: keep the last N")] = None,
        keep_daily: Annotated[int | None, typer.Option(help="retention: keep one a day for N days")] = None,
        lease: Annotated[float, typer.Option(help="longest freeze of an app, seconds")] = 60.0,
        max_per_host: Annotated[int | None, typer.Option(help="at most N such backups at once per host")] = None,
        max_per_repository: Annotated[int | None, typer.Option(
            help="at most N such backups at once into the repository")] = None,
        server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Create a policy."""
    retention = {k: v for k, v in (("keep_last", keep_last), ("keep_daily", keep_daily)) if v}
    body = {"name": name, "protection_set": protection_set, "repository": repository, "cron": cron,
            "timezone": timezone, "consistency": consistency, "on_quiesce_failure": on_quiesce_failure,
            "retention": retention, "lease_s": lease, "max_per_host": max_per_host,
            "max_per_repository": max_per_repository}
    emit(Client(server, token_file).post("/policies", body), json)


@app.command("list")
def list_cmd(server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    emit(Client(server, token_file).get("/policies"), json,
         ["name", "id", "cron", "timezone", "consistency", "next_runs", "max_per_host", "max_per_repository"])


@app.command()
def show(name: str, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """One policy, with its next runs."""
    emit(Client(server, token_file).get(f"/policies/{name}"), json)
