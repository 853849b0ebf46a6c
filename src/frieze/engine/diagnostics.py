"""Diagnostic bundles: a tar.gz of an operation's status, log lines, redacted inputs, recorded steps,
versions and an environment summary. Never contains a secret or a database credential."""

from __future__ import annotations

import io
import json
import os
import platform
import socket
import sys
import tarfile
import time
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of the parts that matter for a bug report."""
    return {"python": sys.version.split()[0], **{d: _version(d) for d in
                                                ("frieze", "dbos", "sqlalchemy", "pydantic", "psycopg")}}


def db_backend(url: str) -> dict[str, Any]:
    """The database backend without credentials: scheme, host, port, database (SQLite: the file name)."""
    u = urlsplit(url)
    if u.scheme.startswith("sqlite"):
        return {"backend": "sqlite", "file": os.path.basename(u.path)}
    return {"backend": "postgresql", "host": u.hostname, "port": u.port, "database": u.path.lstrip("/")}


def environment(executor_id: str, database_url: str) -> dict[str, Any]:
    """A summary of where the engine runs."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "pid": os.getpid(),
        "executor_id": executor_id,
        "database": db_backend(database_url),
        "made_at": time.time(),
    }


def build_bundle(files: dict[str, Any]) -> bytes:
    """A tar.gz with one member per entry; str values are written as is, others as indented JSON."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = (content if isinstance(content, str) else json.dumps(content, indent=2, default=str)).encode()
            info = tarfile.TarInfo(name=f"diagnostics/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
