"""``frieze provision ...``: declare hosts, volumes, repositories, apps, protection sets and policies in one
JSON file and apply it as one operation (validated whole first; undone as a whole if a step fails).

The file is the body of ``POST /v1/operations/provision``. A secret value (an app's ``secrets``, a
repository's ``password`` and S3 keys) may be written as ``{"env": "NAME"}`` (read from this command's
environment) or ``{"file": "/path"}`` (the file's content, one trailing newline removed), so the file itself
need not hold any secret. Secrets are never taken from the command line.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any

import typer

from frieze.cli.client import Client, emit, err
from frieze.cli.ops import Json, Server, TokenFile, Wait, _final
from frieze.core.errors import UsageError

app = typer.Typer(help="Declarative provisioning: apply a JSON file of hosts, volumes, repositories, apps, "
                       "protection sets and policies as one operation.", no_args_is_help=True)

PLAN_COLUMNS = ["kind", "name", "action", "id", "host"]
SECRET_FIELDS = {"apps": ("secrets",), "repositories": ("password", "s3_access_key_id", "s3_secret_access_key")}
File = Annotated[Path, typer.Argument(help="the JSON file (the API's ProvisionRequest)", exists=False)]


def _secret(v: Any, where: str) -> Any:
    if isinstance(v, dict) and set(v) == {"env"}:
        name = str(v["env"])
        if name not in os.environ:
            raise UsageError(f"{where}: environment variable {name!r} is not set", variable=name)
        return os.environ[name]
    if isinstance(v, dict) and set(v) == {"file"}:
        p = Path(str(v["file"]))
        try:
            return p.read_text().removesuffix("\n")
        except OSError as e:
            raise UsageError(f"{where}: cannot read secret file {str(p)!r}: {e.strerror}", path=str(p)) from None
    return v


def load(path: Path) -> dict[str, Any]:
    """The batch of ``path`` with every ``{"env"|"file": ...}`` secret resolved."""
    try:
        body = json.loads(path.read_text())
    except OSError as e:
        raise UsageError(f"cannot read {str(path)!r}: {e.strerror}", path=str(path)) from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{str(path)!r} is not JSON: {e.msg} at line {e.lineno} column {e.colno}",
                         path=str(path)) from None
    if not isinstance(body, dict):
        raise UsageError(f"{str(path)!r} must hold a JSON object with lists of hosts, volumes, ...", path=str(path))
    for kind, fields in SECRET_FIELDS.items():
        for i, item in enumerate(body.get(kind) or []):
            if not isinstance(item, dict):
                continue
            for f in fields:
                if f not in item:
                    continue
                where = f"{kind}[{i}].{f}"
                if f == "secrets" and isinstance(item[f], dict):
                    item[f] = {k: _secret(v, f"{where}.{k}") for k, v in item[f].items()}
                else:
                    item[f] = _secret(item[f], where)
    return body


def _write_token(tokens_dir: Path, host: str, token: str) -> Path:
    tokens_dir.mkdir(parents=True, exist_ok=True)
    p = tokens_dir / f"{host}.token"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return p


@app.command()
def plan(file: File, server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Validate the file against the catalog and show what apply would create or leave unchanged."""
    emit(Client(server, token_file).post("/provision/plan", load(file)), json, PLAN_COLUMNS)


@app.command()
def apply(file: File, wait: Wait = True,
          tokens_dir: Annotated[Path | None, typer.Option(
              help="write each created host's one-time enrollment token to DIR/<host>.token (mode 0600) instead "
                   "of printing it")] = None,
          server: Server = None, token_file: TokenFile = None, json: Json = False) -> None:
    """Apply the file as one provision operation; with --wait, then issue an enrollment token for every host
    it created."""
    c = Client(server, token_file)
    acc = c.post("/operations/provision", load(file))
    if not json:
        emit(acc["plan"], False, PLAN_COLUMNS, title=f"operation {acc['operation_id']}")
    if not wait:
        if json:
            emit(acc, True)
        return
    st = c.wait(acc["operation_id"], quiet=json)
    tokens: dict[str, str] = {}
    if st["state"] == "complete":
        for h in ((st.get("result") or {}).get("created") or {}).get("hosts") or []:
            got = c.post(f"/hosts/{h['id']}/enrollment-token", {})
            if tokens_dir is not None:
                tokens[h["name"]] = str(_write_token(tokens_dir, h["name"], got["enrollment_token"]))
            else:
                tokens[h["name"]] = got["enrollment_token"]
    if st["state"] != "complete":
        _final(st, json)  # prints the error and exits with the error tree's code
        return
    if json:
        emit({**st, "plan": acc["plan"], ("enrollment_token_files" if tokens_dir else "enrollment_tokens"): tokens},
             True)
        return
    counts = (st.get("result") or {}).get("counts") or {}
    err.print(f"provisioned: {counts.get('created', 0)} created, {counts.get('unchanged', 0)} unchanged")
    if tokens:
        emit([{"host": k, ("token file" if tokens_dir else "enrollment token"): v} for k, v in tokens.items()],
             False, title="one-time enrollment tokens (frieze agent enroll)")
