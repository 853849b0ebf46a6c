"""open_store: URL parsing, entry points, refusals that name the problem."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tests.support.s3 import S3Server

from frieze.core.errors import UsageError
from frieze.repo.blobstore.local import LocalBlobStore
from frieze.repo.blobstore.memory import MemoryBlobStore
from frieze.repo.blobstore.registry import open_store
from frieze.repo.blobstore.s3 import S3BlobStore


def test_plain_path_and_file_url(tmp_path: Path) -> None:
    a = open_store(str(tmp_path / "r"))
    assert isinstance(a, LocalBlobStore) and a.root == tmp_path / "r"
    a.put("x", b"1")
    b = open_store(f"file://{tmp_path}/r", append_only=True)
    assert isinstance(b, LocalBlobStore) and b.append_only
    assert b.get("x") == b"1"
    c = open_store(f"file://localhost{tmp_path}/r")
    assert c.get("x") == b"1"


def test_memory_named_is_shared() -> None:
    name = f"reg-{uuid.uuid4().hex}"
    a = open_store(f"memory://{name}")
    assert isinstance(a, MemoryBlobStore)
    a.put("k", b"v")
    assert open_store(f"memory://{name}").get("k") == b"v"
    assert open_store("memory://").stat("k") is None
    MemoryBlobStore.forget_named(name)


def test_s3_url(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket(object_lock=True)
    url = s3_server.url(bucket, "some/prefix") + "&lock_days=2&lock_mode=governance"
    s = open_store(url, credentials=s3_server.credentials)
    assert isinstance(s, S3BlobStore)
    assert s.prefix == "some/prefix/" and s.object_lock_days == 2 and s.object_lock_mode == "GOVERNANCE"
    s.put("k", b"v")
    head = s3_server.client().head_object(Bucket=bucket, Key="some/prefix/k")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    # the coordinator's calling convention: credentials as keywords
    t = open_store(s3_server.url(bucket, "some/prefix"), **s3_server.credentials)
    assert t.get("k") == b"v"


@pytest.mark.parametrize(("url", "needle"), [
    ("ftp://host/x", "'ftp'"),
    ("file://otherhost/x", "otherhost"),
    ("file:///tmp/x?foo=1", "foo"),
    ("s3:///prefix", "bucket"),
    ("s3://b/p?endpont=http://x", "endpont"),
    ("s3://b/p?lock_days=many", "lock_days"),
    ("", "empty"),
])
def test_bad_urls_named(url: str, needle: str) -> None:
    with pytest.raises(UsageError) as ei:
        open_store(url)
    assert needle in str(ei.value)


def test_credentials_in_url_refused_without_echo() -> None:
    with pytest.raises(UsageError) as ei:
        open_store("s3://AKID:SeCrEt-canary@bucket/p")
    assert "SeCrEt-canary" not in str(ei.value) and "SeCrEt-canary" not in repr(ei.value.to_dict())


def test_credentials_refused_for_local(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no credentials"):
        open_store(str(tmp_path), credentials={"access_key_id": "a", "secret_access_key": "b"})
    with pytest.raises(UsageError, match="no credentials"):
        open_store("memory://x", access_key_id="a", secret_access_key="b")
