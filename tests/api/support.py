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


@contextmanager
def serve_in_thread(c: Any) -> Iterator[str]:
    """The coordinator ``c``'s API served by uvicorn on a free port in a thread; yields its base URL once
    ``/v1/health`` answers, and stops the server on exit. Logs go to stderr at warning level (not into a
    CLI's captured stdout)."""
    import threading
    import time

    import httpx
    import uvicorn

    from frieze.coordinator import logs
    from tests.support.ports import free_port

    logs.configure("warning")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(c), host="127.0.0.1", port=port, log_level="warning",
                                        http="h11"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/v1/health", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.1)
    try:
        yield url
    finally:
        srv.should_exit = True
        t.join(timeout=10)
