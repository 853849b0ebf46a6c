"""Fixtures for the blob store tests: one factory per implementation, and the moto S3 server.

``store_factory`` is parametrized over every implementation. Calling it returns a *new* store object on
the *same* backing storage each time within one test (same directory, named memory space, or bucket and
prefix), so tests can check what a second process/opener sees.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.s3 import S3Server, s3_server  # noqa: F401

from frieze.repo.blobstore.base import BlobStore

Factory = Callable[..., BlobStore]

#: Small multipart settings so the conformance suite's large blob takes the multipart path on S3.
S3_TEST_THRESHOLD = 5 * 1024 * 1024
S3_TEST_PART = 5 * 1024 * 1024

IMPLEMENTATIONS = ["local", "memory", "s3", "faulty"]


def _module(name: str) -> Any:
    """The implementation's module; a missing or broken module fails the test (never a skip)."""
    return importlib.import_module(f"frieze.repo.blobstore.{name}")


@pytest.fixture(params=IMPLEMENTATIONS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    kind = request.param
    opened: list[BlobStore] = []
    if kind == "local":
        mod = _module("local")

        def make(append_only: bool = False) -> BlobStore:
            s: BlobStore = mod.LocalBlobStore(tmp_path / "store", append_only=append_only)
            opened.append(s)
            return s
    elif kind == "memory":
        mod = _module("memory")
        name = f"conf-{uuid.uuid4().hex}"

        def make(append_only: bool = False) -> BlobStore:
            s: BlobStore = mod.MemoryBlobStore(append_only=append_only, name=name)
            opened.append(s)
            return s
    elif kind == "s3":
        mod = _module("s3")
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = server.make_bucket()

        def make(append_only: bool = False) -> BlobStore:
            s: BlobStore = mod.S3BlobStore(
                bucket, prefix="repo/x", endpoint_url=server.endpoint, region=server.region,
                credentials=server.credentials, append_only=append_only,
                multipart_threshold=S3_TEST_THRESHOLD, part_size=S3_TEST_PART)
            opened.append(s)
            return s
    elif kind == "faulty":
        mem = _module("memory")
        fmod = _module("faulty")
        name = f"conf-{uuid.uuid4().hex}"

        def make(append_only: bool = False) -> BlobStore:
            s: BlobStore = fmod.FaultyBlobStore(mem.MemoryBlobStore(append_only=append_only, name=name))
            opened.append(s)
            return s
    else:  # pragma: no cover
        raise AssertionError(kind)
    yield make
    for s in opened:
        s.close()
    if kind in ("memory", "faulty"):
        _module("memory").MemoryBlobStore.forget_named(name)
