"""A real S3-speaking server for tests: moto's ``ThreadedMotoServer`` on a free loopback port.

Use the session fixture (import it into your test module or conftest)::

    from tests.support.s3 import s3_server  # noqa: F401

    def test_x(s3_server):
        bucket = s3_server.make_bucket()                    # a fresh, empty bucket per call
        locked = s3_server.make_bucket(object_lock=True)    # versioned, Object Lock enabled
        client = s3_server.client()                         # a boto3 client for assertions
        url = s3_server.url(bucket, "prefix")               # s3://bucket/prefix?endpoint=...&region=...

or the context manager :func:`moto_s3` outside pytest. The credentials (:attr:`S3Server.credentials`) are
moto's dummies and are passed to stores as an object, never through argv or the environment. The server
runs in a thread of the test process; it keeps objects in memory, so keep test blobs small.
"""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.ports import free_port

REGION = "us-east-1"


@dataclass
class S3Server:
    """A running moto server."""

    endpoint: str
    region: str = REGION
    credentials: dict[str, str] = field(
        default_factory=lambda: {"access_key_id": "testing", "secret_access_key": "testing"})

    def client(self) -> Any:
        """A boto3 S3 client talking to this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.credentials["access_key_id"],
            aws_secret_access_key=self.credentials["secret_access_key"],
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )

    def make_bucket(self, *, object_lock: bool = False, name: str | None = None) -> str:
        """Create a fresh bucket (versioned and Object-Lock enabled if ``object_lock``); return its name."""
        bucket = name or f"t-{uuid.uuid4().hex[:20]}"
        kw: dict[str, Any] = {"Bucket": bucket}
        if object_lock:
            kw["ObjectLockEnabledForBucket"] = True
        self.client().create_bucket(**kw)
        return bucket

    def url(self, bucket: str, prefix: str = "") -> str:
        """A store URL for :func:`frieze.repo.blobstore.registry.open_store`."""
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region={self.region}"


@contextlib.contextmanager
def moto_s3() -> Iterator[S3Server]:
    """Start a moto S3 server on a free port for the duration of the block; always stop it."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:  # pragma: no cover - moto[server] is a test dependency
        pytest.skip(f"moto[server] is not installed: {e}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines in the test output
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(endpoint=f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the test session (make a fresh bucket per test with ``make_bucket``)."""
    with moto_s3() as s:
        yield s


_REQUEST_LINE = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE) \S+ HTTP/1\.[01]\r\n")


class FaultProxy:
    """A TCP proxy in front of an S3 server that can lose responses or refuse service, for fault tests.

    ``drop(n, request=rb"^PUT ")``: the responses to the next ``n`` requests whose request line matches the
    regex are swallowed and their client connection closed *after* the request reached the server (the
    write happened; the client never hears of it). ``refuse = True``: every new connection is closed at
    once. ``endpoint`` is the URL to give the store; ``dropped``/``refused`` count what happened.
    """

    def __init__(self, upstream: str) -> None:
        import socket
        import threading

        u = urllib.parse.urlsplit(upstream)
        self._up = (u.hostname or "127.0.0.1", int(u.port or 80))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._drop_n = 0
        self._drop_re: re.Pattern[bytes] = re.compile(b"^$")
        self.refuse = False
        self.dropped = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self, n: int = 1, request: bytes = rb"^PUT ") -> None:
        """Lose the responses to the next ``n`` requests whose request line matches ``request``."""
        with self._lock:
            self._drop_n = n
            self._drop_re = re.compile(request)

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            if self.refuse:
                with self._lock:
                    self.refused += 1
                c.close()
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: Any) -> None:
        import socket
        import threading

        try:
            u = socket.create_connection(self._up)
        except OSError:
            c.close()
            return

        doomed = threading.Event()

        def pump_up() -> None:
            try:
                while data := c.recv(65536):
                    if _REQUEST_LINE.match(data):
                        with self._lock:
                            if self._drop_n > 0 and self._drop_re.match(data):
                                self._drop_n -= 1
                                self.dropped += 1
                                doomed.set()
                    u.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    u.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump_up, daemon=True).start()
        try:
            while data := u.recv(65536):
                if doomed.is_set():
                    # let interim "100 Continue"s through (the body must still reach the server), drop the rest
                    while data.startswith(b"HTTP/1.1 100"):
                        head, sep, data = data.partition(b"\r\n\r\n")
                        c.sendall(head + sep)
                    if not data:
                        continue
                    return
                c.sendall(data)
        except OSError:
            pass
        finally:
            for s in (c, u):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()
