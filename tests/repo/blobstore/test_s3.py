"""S3-store specifics against a real moto server: Object Lock, lost responses, transient failures, opening."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError
from tests.support.s3 import FaultProxy, S3Server

from frieze.core.errors import AlreadyExists, NotFound, StorageError, TransientStorageError, UsageError
from frieze.repo.blobstore.s3 import S3BlobStore, S3Credentials

MiB = 1024 * 1024


def _store(server: S3Server, bucket: str, endpoint: str | None = None, **kw: object) -> S3BlobStore:
    kw.setdefault("multipart_threshold", 5 * MiB)
    kw.setdefault("part_size", 5 * MiB)
    return S3BlobStore(bucket, prefix="vault", endpoint_url=endpoint or server.endpoint, region=server.region,
                       credentials=server.credentials, **kw)  # type: ignore[arg-type]


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_server.endpoint)
    yield p
    p.close()


@pytest.mark.parametrize("size", [1000, 6 * MiB])
def test_object_lock_retention_on_every_object(s3_server: S3Server, size: int) -> None:
    bucket = s3_server.make_bucket(object_lock=True)
    s = _store(s3_server, bucket, object_lock_days=1)
    assert s.capabilities.object_lock
    data = os.urandom(size)
    s.put("data/locked", data)
    c = s3_server.client()
    h = c.head_object(Bucket=bucket, Key="vault/data/locked")
    assert h["ObjectLockMode"] == "COMPLIANCE"
    until = h["ObjectLockRetainUntilDate"]
    expect = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert abs((until - expect).total_seconds()) < 600
    vid = h["VersionId"]
    # the store's delete only hides the blob (a delete marker) ...
    s.delete("data/locked")
    assert s.stat("data/locked") is None
    with pytest.raises(NotFound):
        s.get("data/locked")
    assert [b.key for b in s.list()] == []
    # ... the locked version is still there, and deleting that version is refused by the server
    versions = c.list_object_versions(Bucket=bucket, Prefix="vault/data/locked").get("Versions", [])
    assert vid in [v["VersionId"] for v in versions]
    with pytest.raises(ClientError) as ei:
        c.delete_object(Bucket=bucket, Key="vault/data/locked", VersionId=vid)
    assert ei.value.response["Error"]["Code"] == "AccessDenied"
    assert c.get_object(Bucket=bucket, Key="vault/data/locked", VersionId=vid)["Body"].read() == data
    print(f"RESULT s3-object-lock size={size} mode=COMPLIANCE retained_days=1 delete_marker_only=1 "
          f"version_delete_refused=1")


def test_object_lock_needs_a_lock_enabled_bucket(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    with pytest.raises(UsageError, match="Object Lock"):
        _store(s3_server, bucket, object_lock_days=1)
    with pytest.raises(UsageError):
        _store(s3_server, bucket, object_lock_days=0)


def test_governance_mode_is_bypassable_compliance_is_not(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket(object_lock=True)
    c = s3_server.client()
    gov = _store(s3_server, bucket, object_lock_days=1, object_lock_mode="GOVERNANCE")
    gov.put("g", b"governed")
    vid = c.head_object(Bucket=bucket, Key="vault/g")["VersionId"]
    with pytest.raises(ClientError):
        c.delete_object(Bucket=bucket, Key="vault/g", VersionId=vid)
    c.delete_object(Bucket=bucket, Key="vault/g", VersionId=vid, BypassGovernanceRetention=True)
    comp = _store(s3_server, bucket, object_lock_days=1)
    comp.put("c", b"compliant")
    vid = c.head_object(Bucket=bucket, Key="vault/c")["VersionId"]
    with pytest.raises(ClientError):
        c.delete_object(Bucket=bucket, Key="vault/c", VersionId=vid, BypassGovernanceRetention=True)


def test_lost_response_of_a_create_is_resolved(s3_server: S3Server, proxy: FaultProxy) -> None:
    """The first PUT reaches the server but its answer is lost; botocore retries, gets 412, and the store
    reads the blob back: same bytes -> the put succeeded (not a false AlreadyExists). For a multipart put the
    lost answer is that of CompleteMultipartUpload; moto (like AWS) answers its retry with 200, so that case
    checks the end result only; the single PUT case is what exercises the read-back (it fails without it)."""
    bucket = s3_server.make_bucket()
    s = _store(s3_server, bucket, endpoint=proxy.endpoint)
    for size, request in ((1000, rb"^PUT /[^?]*/lost/1000 "), (6 * MiB, rb"^POST /[^?]*/lost/\d+\?uploadId=")):
        data = os.urandom(size)
        proxy.drop(1, request)
        s.put(f"lost/{size}", data)
        assert proxy.dropped == 1, "the fault was not injected"
        assert s.get(f"lost/{size}") == data
        proxy.dropped = 0
    # a genuine existing key is still AlreadyExists
    with pytest.raises(AlreadyExists):
        s.put("lost/1000", b"other")
    print("RESULT s3-lost-response cases=2 resolved=2")


def test_transient_failures_are_retried_then_translated(s3_server: S3Server, proxy: FaultProxy) -> None:
    bucket = s3_server.make_bucket()
    s = _store(s3_server, bucket, endpoint=proxy.endpoint, max_attempts=3, connect_timeout=2, read_timeout=5)
    s.put("t/a", b"before")
    proxy.refuse = True
    with pytest.raises(TransientStorageError) as ei:
        s.get("t/a")
    assert ei.value.retryable
    assert "t/a" in str(ei.value)
    assert proxy.refused >= 3
    with pytest.raises(TransientStorageError):
        s.put("t/b", b"x")
    proxy.refuse = False
    assert s.get("t/a") == b"before"
    s.put("t/b", b"after")
    assert s.get("t/b") == b"after"


def test_unreachable_endpoint_is_transient(s3_server: S3Server) -> None:
    from tests.support.ports import free_port

    with pytest.raises(TransientStorageError):
        S3BlobStore("b", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                    credentials={"access_key_id": "a", "secret_access_key": "b"}, max_attempts=2, connect_timeout=1)


def test_missing_bucket_and_bad_arguments(s3_server: S3Server) -> None:
    with pytest.raises(NotFound, match="no-such-bucket"):
        _store(s3_server, "no-such-bucket")
    s = _store(s3_server, "no-such-bucket", check_bucket=False)
    with pytest.raises(StorageError) as ei:  # not NotFound: a missing bucket must not look like a missing blob
        s.get("x")
    assert not isinstance(ei.value, NotFound)
    with pytest.raises(UsageError):
        _store(s3_server, "b", part_size=1024)
    with pytest.raises(UsageError):
        S3BlobStore("b", credentials={"access_key_id": "a"}, check_bucket=False)


def test_credentials_never_shown(s3_server: S3Server) -> None:
    secret = "SECRET-canary-4711"
    creds = S3Credentials("AKIDCANARY", secret)
    assert secret not in repr(creds)
    bucket = s3_server.make_bucket()
    s = S3BlobStore(bucket, endpoint_url=s3_server.endpoint, region=s3_server.region, credentials=creds)
    assert secret not in repr(s)
    with pytest.raises(NotFound) as ei:
        s.get("absent")
    assert secret not in str(ei.value) and secret not in repr(ei.value.to_dict())


def test_prefix_isolates_and_foreign_objects_are_skipped(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    a = S3BlobStore(bucket, prefix="a", endpoint_url=s3_server.endpoint, credentials=s3_server.credentials)
    b = S3BlobStore(bucket, prefix="ab", endpoint_url=s3_server.endpoint, credentials=s3_server.credentials)
    a.put("k", b"in a")
    b.put("k", b"in ab")
    s3_server.client().put_object(Bucket=bucket, Key="a/folder/", Body=b"")  # a console "folder"
    assert [x.key for x in a.list()] == ["k"]
    assert a.get("k") == b"in a" and b.get("k") == b"in ab"


def test_failed_multipart_leaves_nothing(s3_server: S3Server, proxy: FaultProxy) -> None:
    bucket = s3_server.make_bucket()
    s = _store(s3_server, bucket, endpoint=proxy.endpoint, max_attempts=2, connect_timeout=2, read_timeout=5)
    s.put("mp/exists", b"small")
    with pytest.raises(AlreadyExists):
        s.put("mp/exists", os.urandom(6 * MiB))
    c = s3_server.client()
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s.get("mp/exists") == b"small"


def test_conditional_complete_guards_a_racing_multipart(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer creates the key after our early check: CompleteMultipartUpload(If-None-Match) refuses,
    the upload is aborted, and the other writer's bytes stay."""
    bucket = s3_server.make_bucket()
    s = _store(s3_server, bucket)
    other = _store(s3_server, bucket)
    real_create = s._client.create_multipart_upload

    def create_then_race(**kw: object) -> object:
        r = real_create(**kw)
        other.put("mp/race", b"the other writer won")
        return r

    monkeypatch.setattr(s._client, "create_multipart_upload", create_then_race)
    with pytest.raises(AlreadyExists):
        s.put("mp/race", os.urandom(6 * MiB))
    assert s.get("mp/race") == b"the other writer won"
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_failed_part_aborts_the_upload(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_server.make_bucket()
    s = _store(s3_server, bucket)
    real = s._client.upload_part

    def flaky(**kw: object) -> object:
        if kw["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "UploadPart")
        return real(**kw)

    monkeypatch.setattr(s._client, "upload_part", flaky)
    with pytest.raises(TransientStorageError, match="mp/fail"):
        s.put("mp/fail", os.urandom(11 * MiB))
    assert s.stat("mp/fail") is None
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    monkeypatch.undo()
    data = os.urandom(11 * MiB)
    s.put("mp/fail", data)
    assert s.get("mp/fail") == data
