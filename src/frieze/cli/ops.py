"""``frieze op ...``: backup, restore, recover, access, and the operations' status, list, wait, cancel, logs and
diagnostics. Every request returns an operation id at once; ``--wait`` (default for backup/restore/recover)
polls it with a progress bar. Exit codes come from the error tree; ``--json`` everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from frieze.cli.client import Client, emit, err
from frieze.core.errors import Cancelled, FriezeError

app = typer.Typer(help="Operations: backup, restore, recover, access, status, list, cancel, logs, diagnostics.",
                  no_args_is_help=True)

Server = Annotated[str | None, typer.Option("--server", help="coordinator URL (or FRIEZE_SERVER)")]
TokenFile = Annotated[Path | None, typer.Option("--token-file", help="file holding the API token")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="poll until the operation is final")]

OP_COLUMNS = ["id", "type", "state", "step", "steps_done", "steps_total", "created"]


def _finish(c: Client, acc: dict[str, Any], wait: bool, as_json: bool) -> None:
    if not wait:
        emit(acc, as_json)
        return
    st = c.wait(acc["operation_id"], quiet=as_json)
    _final(st, as_json)


def _final(st: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(st, True)
    else:
        res = st.get("result") or {}
        summary = {"operation": st["id"], "type": st["type"], "state": st["state"], **res}
        if st.get("error"):
            summary["error"] = st["error"].get("message")
        emit(summary, False)
    if st["state"] == "failed":
        e = st.get("error") or {}
        from frieze.cli.client import error_from

        exc = error_from(500, {"code": e.get("code", "internal"), "message": e.get("message", "failed")})
        raise SystemExit(exc.exit_code)
    if st["state"] == "canceled":
        raise SystemExit(Cancelled.exit_code)


@app.command()
def backup(protection_set: Annotated[str, typer.Argument(help="protection set name or id")],
           policy: Annotated[str | None, typer.Option(help="policy name or id")] = None,
           repository: Annotated[str | None, typer.Option(help="repository (without a policy)")] = None,
           consistency: Annotated[str | None, typer.Option(help="application or crash")] = None,
           wait: Wait = True, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Back up a protection set now."""
    c = Client(server, token_file)
    acc = c.post("/operations/backup", {"protection_set": protection_set, "policy": policy,
                                        "repository": repository, "consistency": consistency})
    _finish(c, acc, wait, json)


@app.command()
def restore(restore_point: Annotated[str, typer.Argument(help="restore point id")],
            target_path: Annotated[str | None, typer.Option("--to", help="absolute target path on the host")] = None,
            target_host: Annotated[str | None, typer.Option("--host", help="target host (default: original)")]
            = None,
            volume: Annotated[str | None, typer.Option(help="which volume of the restore point")] = None,
            path: Annotated[list[str] | None, typer.Option("--path", help="restore only this path (repeat)")]
            = None,
            overwrite: Annotated[bool, typer.Option(help="allow an existing, non-empty target")] = False,
            wait: Wait = True, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Restore a restore point (whole or chosen paths) to its place or another host and path."""
    c = Client(server, token_file)
    acc = c.post("/operations/restore", {"restore_point": restore_point, "volume": volume,
                                         "target_host": target_host, "target_path": target_path,
                                         "paths": path or [], "overwrite": overwrite})
    _finish(c, acc, wait, json)


@app.command()
def access(restore_point: Annotated[str, typer.Argument(help="restore point id")],
           output: Annotated[Path, typer.Option("-o", "--output", help="tar file to write (must not exist)")],
           volume: Annotated[str | None, typer.Option(help="which volume of the restore point")] = None,
           path: Annotated[list[str] | None, typer.Option("--path", help="only this path (repeat)")] = None,
           ttl: Annotated[float, typer.Option(help="seconds the coordinator keeps the archive")] = 86400.0,
           server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Read a restore point through the coordinator: its paths packed into a tar archive, downloaded to -o.
    No host is involved; every byte was authenticated by the repository."""
    from frieze.core.errors import AlreadyExists, IntegrityError

    if output.exists():
        raise AlreadyExists(f"{output} exists; choose another file", path=str(output))
    c = Client(server, token_file)
    acc = c.post("/operations/access", {"restore_point": restore_point, "volume": volume, "paths": path or [],
                                        "ttl_s": ttl})
    st = c.wait(acc["operation_id"], quiet=json)
    if st["state"] != "complete":
        _final(st, json)
        return
    res = st["result"]
    n, digest = c.download(str(res["archive"]).removeprefix("/v1"), output)
    if digest != res["sha256"]:
        output.unlink()
        raise IntegrityError(f"the downloaded archive does not match its SHA-256 ({res['sha256'][:16]}…); removed",
                             operation=st["id"])
    emit({"operation": st["id"], "file": str(output), "bytes": n, "files": res["files"], "sha256": res["sha256"],
          "expires_at": res["expires_at"]}, json)


@app.command()
def recover(app_ref: Annotated[str, typer.Argument(metavar="APP", help="app name or id")],
            time: Annotated[str | None, typer.Option(help="RFC 3339 time to recover to")] = None,
            position: Annotated[str | None, typer.Option(help="log position (LSN, binlog file:pos)")] = None,
            name: Annotated[str | None, typer.Option(help="named restore point")] = None,
            host: Annotated[str | None, typer.Option(help="host of the app")] = None,
            wait: Wait = True, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Recover an app to a point in time, or to the end of all its logs (no target given)."""
    c = Client(server, token_file)
    acc = c.post("/operations/recover", {"app": app_ref, "host": host,
                                         "target": {"time": time, "position": position, "name": name}})
    _finish(c, acc, wait, json)


@app.command()
def status(op_id: str, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Show one operation."""
    emit(Client(server, token_file).get(f"/operations/{op_id}"), json)


@app.command("wait")
def wait_cmd(op_id: str, timeout: Annotated[float | None, typer.Option(help="seconds")] = None,
             server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Wait for an operation to finish (progress bar); exits non-zero if it failed or was canceled."""
    _final(Client(server, token_file).wait(op_id, quiet=json, timeout=timeout), json)


@app.command("list")
def list_cmd(state: Annotated[str | None, typer.Option(help="queued, running, complete, failed...")] = None,
             type: Annotated[str | None, typer.Option(help="backup, restore, recover")] = None,
             limit: int = 50, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """List operations, newest first."""
    emit(Client(server, token_file).get("/operations", state=state, type=type, limit=limit), json, OP_COLUMNS)


@app.command()
def cancel(op_id: str, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Cancel an operation: the running task finishes, then its undo path runs."""
    emit(Client(server, token_file).post(f"/operations/{op_id}/cancel"), json)


@app.command()
def logs(op_id: str, since: int = 0, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Show an operation's log lines."""
    lines = Client(server, token_file).get(f"/operations/{op_id}/logs", since=since)
    if json:
        emit(lines, True)
        return
    for ln in lines:
        err.print(f"{ln['ts']} {ln['level']:7} {ln['step'] or '-':22} {ln['message']}", highlight=False, markup=False)


@app.command()
def diagnostics(op_id: str, output: Annotated[Path, typer.Option("-o", "--output", help="file to write")]
                = Path("diagnostics.tar.gz"), server: Server = None, token_file: TokenFile = None,
                json: Json = False) -> None:
    """Download an operation's diagnostic bundle (tar.gz)."""
    data = Client(server, token_file).get(f"/operations/{op_id}/diagnostics")
    if not isinstance(data, bytes):
        raise FriezeError("the coordinator did not return a bundle")
    output.write_bytes(data)
    emit({"operation": op_id, "file": str(output), "bytes": len(data)}, json)
