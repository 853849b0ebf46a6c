"""The CLI's HTTP client for the coordinator API, and the shared output helpers of the resource commands.

- Server: ``--server`` or ``FRIEZE_SERVER`` (default ``http://127.0.0.1:8700``); for an HTTPS coordinator with
  a private CA, ``FRIEZE_CA_FILE``.
- Token: read from a file (``--token-file``, ``FRIEZE_TOKEN_FILE``, default ``.frieze/admin.token``), never
  from the command line, so it cannot show in ``/proc/*/cmdline``.
- An error answer becomes the FriezeError class named by its ``code`` (exit code from the error tree);
  a connection failure is a StorageError-class "coordinator unreachable" (retryable).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from frieze.core.errors import FriezeError, TransientStorageError, UsageError, all_error_classes

out = Console(emoji=False)
err = Console(stderr=True, emoji=False, soft_wrap=True)

FINAL = ("complete", "failed", "canceled")


def _classes() -> dict[str, type[FriezeError]]:
    import frieze.engine.errors  # noqa: F401  (registers its subclasses)

    return {c.code: c for c in all_error_classes()}


def error_from(status: int, body: Any) -> FriezeError:
    """The FriezeError an error answer stands for."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        code = body["code"]
        cls = _classes().get(code)
        if cls is None:  # a finer code than the CLI knows (usage.invalid_request): its family, same code
            base = _classes().get(code.split(".")[0]) or (UsageError if status < 500 else FriezeError)
            cls = type(base.__name__, (base,), {"code": code})
        raw = body.get("details")
        details: dict[str, Any] = raw if isinstance(raw, dict) else {}
        e = cls(str(body.get("message", code)), **details)
        return e
    return FriezeError(f"the coordinator answered HTTP {status}")


class Client:
    def __init__(self, server: str | None = None, token_file: Path | None = None, timeout: float = 30.0) -> None:
        self.server = (server or os.environ.get("FRIEZE_SERVER") or "http://127.0.0.1:8700").rstrip("/")
        tf = token_file or Path(os.environ.get("FRIEZE_TOKEN_FILE", ".frieze/admin.token"))
        headers = {}
        try:
            headers["Authorization"] = "Bearer " + tf.read_text().strip()
        except FileNotFoundError:
            pass
        except PermissionError as e:
            raise UsageError(f"cannot read token file {tf}", path=str(tf)) from e
        ca = os.environ.get("FRIEZE_CA_FILE")  # a private CA for an HTTPS coordinator (else the system's)
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, verify=ca or True)

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        try:
            r = self.http.request(method, "/v1" + path, json=body, params=params)
        except httpx.HTTPError as e:
            raise TransientStorageError(f"the coordinator at {self.server} is unreachable ({type(e).__name__})",
                                        server=self.server) from e
        if r.status_code >= 400:
            raise _error(r)
        if r.status_code == 204:
            return None
        ctype = r.headers.get("content-type", "")
        return r.json() if "json" in ctype else r.content

    def download(self, path: str, dest: Path) -> tuple[int, str]:
        """Stream ``GET /v1<path>`` into ``dest`` (written as ``dest.part``, renamed when complete); returns
        (bytes, SHA-256 hex of them, computed as they arrive)."""
        import hashlib

        part = dest.with_name(dest.name + ".part")
        n, h = 0, hashlib.sha256()
        try:
            with self.http.stream("GET", "/v1" + path, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _error(r)
                with part.open("wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        f.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
        except httpx.HTTPError as e:
            part.unlink(missing_ok=True)
            raise TransientStorageError(f"the coordinator at {self.server} is unreachable ({type(e).__name__})",
                                        server=self.server) from e
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(dest)
        return n, h.hexdigest()

    def get(self, route: str, /, **params: Any) -> Any:
        return self.request("GET", route, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def wait(self, op_id: str, *, quiet: bool = False, poll: float = 0.25, timeout: float | None = None) -> Any:
        """Poll an operation until it is final, with a progress bar on stderr (unless ``quiet``)."""
        t0 = time.monotonic()
        st = self.get(f"/operations/{op_id}")
        show = not quiet and err.is_terminal
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[steps]}"),
                      DownloadColumn(), TimeElapsedColumn(), console=err, disable=not show, transient=True) as prog:
            task = prog.add_task(st["type"], total=None, steps="")
            while st["state"] not in FINAL:
                prog.update(task, description=f"{st['type']} {st['state']} {st['step'] or ''}",
                            steps=f"{st['steps_done']}/{st['steps_total']}",
                            completed=st["bytes_done"], total=st["bytes_total"] or None)
                if timeout is not None and time.monotonic() - t0 > timeout:
                    from frieze.core.errors import DeadlineExceeded

                    raise DeadlineExceeded(f"operation {op_id} is not finished after {timeout:g} s", op=op_id)
                time.sleep(poll)
                st = self.get(f"/operations/{op_id}")
        return st


def _error(r: httpx.Response) -> FriezeError:
    """The error-tree exception an error response carries (its JSON body, when it has one)."""
    try:
        payload = r.json()
    except ValueError:
        payload = None
    return error_from(r.status_code, payload)


def emit(data: Any, as_json: bool, columns: list[str] | None = None, title: str | None = None) -> None:
    """Print ``data`` as JSON (stdout) or a rich table / key-value list."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=None, default=str) + "\n")
        return
    if isinstance(data, list):
        cols = columns or (list(data[0]) if data else [])
        t = Table(title=title)
        for c in cols:
            t.add_column(c)
        for row in data:
            t.add_row(*[_cell(row.get(c)) for c in cols])
        out.print(t)
    elif isinstance(data, dict):
        t = Table(show_header=False, title=title)
        t.add_column("field", style="bold")
        t.add_column("value")
        for k, v in data.items():
            t.add_row(k, _cell(v))
        out.print(t)
    else:
        out.print(data)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return str(v)


def read_secret(prompt: str, from_file: Path | None) -> str:
    """A secret from a file (``-`` for stdin) or an interactive prompt; never from argv."""
    if from_file is not None:
        text = sys.stdin.read() if str(from_file) == "-" else from_file.read_text()
        return text.rstrip("\n")
    if not sys.stdin.isatty():
        raise UsageError(f"{prompt}: give it with a --*-file option (or '-' for stdin)")
    import getpass

    return getpass.getpass(prompt + ": ")
