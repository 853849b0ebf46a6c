"""An in-process coordinator (engine running, scheduler off) behind the FastAPI app, for API tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from frieze.api.app import create_app
from tests.coordinator.support import coordinator

CANARY_REPO_PW = "CANARY-repo-pw-4b1d9e0c"
CANARY_DB_PW = "CANARY-db-pw-77aa31f2"
CANARY_S3 = "CANARY-s3-secret-0c9f21"


@contextmanager
def api(tmp: Path, **cfg: Any) -> Iterator[tuple[Any, TestClient, dict[str, str]]]:
    with coordinator(tmp, **cfg) as c:
        token = (tmp / "state" / "admin.token").read_text().strip()
        client = TestClient(create_app(c))
        yield c, client, {"Authorization": f"Bearer {token}"}
