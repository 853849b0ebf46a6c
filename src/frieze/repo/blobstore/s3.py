"""A blob store in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, moto...), through boto3.

Mapping of the contract (:mod:`.base`)
    Key ``k`` is the object ``<prefix>/k``. :meth:`S3BlobStore.list` strips the prefix and skips objects
    whose names are not valid keys (folder markers and the like).

Create-if-absent, atomically
    A blob up to ``multipart_threshold`` bytes is one ``PutObject`` with ``If-None-Match: *``; a larger one
    is a multipart upload whose ``CompleteMultipartUpload`` carries ``If-None-Match: *`` (the object appears
    whole, or not at all; a failed upload is aborted). The server refuses with 412 ``PreconditionFailed``
    if the key exists: an object is never overwritten. A 412 that follows a retry of our own request (the
    first attempt may have succeeded and its answer been lost) is resolved by reading the object back:
    if it holds exactly our bytes, the put succeeded.

Durability and read-after-write
    The put returned 200 (S3 has been strongly consistent for reads after writes, lists included, since
    December 2020; check that your S3-compatible server is, too).

Object Lock (``object_lock_days``)
    Every object is written with ``ObjectLockMode`` (``COMPLIANCE`` by default, which nobody, the root
    account included, can shorten or remove; ``GOVERNANCE`` can be bypassed by a principal holding
    ``s3:BypassGovernanceRetention``) and ``ObjectLockRetainUntilDate`` = now + ``object_lock_days``. The
    bucket must have been created with Object Lock enabled (which implies versioning); the store checks
    that when it opens. After a multipart upload the store verifies the retention and sets it with
    ``PutObjectRetention`` if the server did not carry it over. :meth:`delete` on a locked bucket only adds
    a delete marker: the blob disappears from ``get``/``stat``/``list``, but the locked version stays
    until its retention ends (a bucket lifecycle rule should expire non-current versions afterwards).

Errors
    Retries of throttling, 5xx and connection errors happen inside (botocore's ``standard`` mode,
    ``max_attempts`` attempts, plus re-reading a response body that broke off). Then:
    412/``PreconditionFailed`` and a 409 conditional conflict where the object now exists ->
    ``AlreadyExists``; ``NoSuchKey``/404 -> ``NotFound`` (a missing *bucket* is a ``StorageError`` naming
    it); quota errors of S3-compatible servers -> ``NoSpace``; throttling, 5xx, timeouts, connection
    errors -> ``TransientStorageError``; anything else -> ``StorageError``. Messages name the operation,
    bucket and key, never a credential.

Credentials are passed as an :class:`S3Credentials` or a mapping (``access_key_id``,
``secret_access_key``, optional ``session_token``), never through argv. Without them, boto3's default
chain applies (environment, config files, instance roles).
"""

from __future__ import annotations

import builtins
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from frieze.core.errors import (
    AlreadyExists,
    Forbidden,
    FriezeError,
    NoSpace,
    NotFound,
    StorageError,
    TransientStorageError,
    UsageError,
)
from frieze.repo.blobstore._common import check_range
from frieze.repo.blobstore.base import _SEGMENT, BlobInfo, Capabilities, check_key

T = TypeVar("T")

_SESSION: Any = None
_SESSION_LOCK = threading.Lock()


def _create_client(**kw: Any) -> Any:
    """A botocore S3 client from one shared session (its loaded service models make this ~20 ms, not ~0.5 s).
    Session.create_client is not thread-safe, hence the lock."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = botocore.session.get_session()
        return _SESSION.create_client("s3", **kw)

DEFAULT_MULTIPART_THRESHOLD = 32 * 1024 * 1024
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last

_TRANSIENT_CODES = {
    "RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "InternalError",
    "ServiceUnavailable", "TooManyRequests", "RequestTimeTooSkewed", "OperationAborted",
}
_NOSPACE_CODES = {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "InsufficientStorage"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}


@dataclass(frozen=True)
class S3Credentials:
    """S3 credentials. ``repr`` never shows the secret parts."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"S3Credentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"

    @classmethod
    def coerce(cls, value: S3Credentials | Mapping[str, str] | None) -> S3Credentials | None:
        """Accept an S3Credentials, a mapping (``access_key_id``/``secret_access_key``/``session_token``,
        also with an ``aws_`` prefix), or None."""
        if value is None or isinstance(value, S3Credentials):
            return value
        m = {k.removeprefix("aws_"): v for k, v in value.items()}
        unknown = set(m) - {"access_key_id", "secret_access_key", "session_token"}
        if unknown:
            raise UsageError(f"unknown S3 credential fields: {sorted(unknown)}", fields=sorted(unknown))
        if not m.get("access_key_id") or not m.get("secret_access_key"):
            raise UsageError("S3 credentials need both access_key_id and secret_access_key")
        return cls(m["access_key_id"], m["secret_access_key"], m.get("session_token") or None)


def _status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", "") or "")


def _retried(e: ClientError) -> bool:
    return int(e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0


class S3BlobStore:
    """Write-once blobs as objects under ``prefix`` in ``bucket``. See the module docstring."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: S3Credentials | Mapping[str, str] | None = None,
        append_only: bool = False,
        object_lock_days: int | None = None,
        object_lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE",
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        part_concurrency: int = 4,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 32,
        verify: bool | str = True,
        check_bucket: bool = True,
    ) -> None:
        if not bucket:
            raise UsageError("S3 store needs a bucket name")
        if object_lock_days is not None and object_lock_days < 1:
            raise UsageError(f"object_lock_days must be at least 1, not {object_lock_days}")
        if object_lock_mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise UsageError(f"object_lock_mode must be COMPLIANCE or GOVERNANCE, not {object_lock_mode!r}")
        if part_size < MIN_PART_SIZE:
            raise UsageError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum), not {part_size}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if self.prefix:
            check_key(self.prefix.rstrip("/"))
        self.endpoint_url = endpoint_url
        self.append_only = append_only
        self.object_lock_days = object_lock_days
        self.object_lock_mode = object_lock_mode
        self.multipart_threshold = max(multipart_threshold, 1)
        self.part_size = part_size
        #: parts of one multipart upload sent in parallel (each holds a copy of its part in memory)
        self.part_concurrency = max(1, part_concurrency)
        self.max_attempts = max(1, max_attempts)
        self.capabilities = Capabilities(name="s3", object_lock=object_lock_days is not None)
        creds = S3Credentials.coerce(credentials)
        cfg = Config(
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self._client: Any = _create_client(
            region_name=region, endpoint_url=endpoint_url, config=cfg, verify=verify,
            aws_access_key_id=creds.access_key_id if creds else None,
            aws_secret_access_key=creds.secret_access_key if creds else None,
            aws_session_token=creds.session_token if creds else None,
        )
        self._closed = False
        self._lock = threading.Lock()
        if check_bucket:
            self._check_bucket()

    def __repr__(self) -> str:
        return (f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r}, "
                f"append_only={self.append_only}, object_lock_days={self.object_lock_days})")

    # -- helpers --------------------------------------------------------------------------------------------

    def _obj(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _where(self, key: str | None) -> str:
        return f"blob {key!r} in bucket {self.bucket!r}" if key is not None else f"bucket {self.bucket!r}"

    def _translate(self, e: Exception, op: str, key: str | None) -> FriezeError:
        where = self._where(key)
        details: dict[str, Any] = {"key": key, "bucket": self.bucket, "op": op}
        if isinstance(e, FriezeError):
            return e
        if isinstance(e, ClientError):
            code, status = _code(e), _status(e)
            details.update(s3_code=code, http_status=status)
            if code == "NoSuchBucket":
                return StorageError(f"S3 {op} of {where} failed: the bucket does not exist", **details)
            if code == "PreconditionFailed" or status == 412:
                return AlreadyExists(f"{where} already exists", **details)
            if code in _NOT_FOUND_CODES or status == 404:
                return NotFound(f"{where} not found", **details)
            if code in _NOSPACE_CODES or status == 507:
                return NoSpace(f"no space left (ENOSPC-like S3 error {code}) on {op} of {where}", **details)
            if code in _TRANSIENT_CODES or code == "ConditionalRequestConflict" or status in (408, 429) \
                    or status >= 500:
                return TransientStorageError(f"S3 {op} of {where} failed transiently: {code or status}", **details)
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                return StorageError(f"S3 {op} of {where} refused: {code or status} (check the credentials and "
                                    f"bucket policy)", **details)
            return StorageError(f"S3 {op} of {where} failed: {code or status}", **details)
        if isinstance(e, BotoConnectionError | HTTPClientError | ReadTimeoutError | IncompleteReadError
                      | ResponseStreamingError):
            return TransientStorageError(f"S3 {op} of {where} failed transiently: {type(e).__name__}", **details)
        if isinstance(e, NoCredentialsError):
            return StorageError(f"S3 {op} of {where}: no credentials were given or found", **details)
        if isinstance(e, BotoCoreError):
            return StorageError(f"S3 {op} of {where} failed: {type(e).__name__}", **details)
        return StorageError(f"S3 {op} of {where} failed: {type(e).__name__}", **details)

    def _call(self, op: str, key: str | None, fn: Callable[[], T], *, retry: bool = False) -> T:
        """Run ``fn`` and translate its errors. ``retry``: also retry transient failures here (idempotent
        reads whose response body can break off after botocore's own retries are done)."""
        attempts = self.max_attempts if retry else 1
        for i in range(attempts):
            try:
                return fn()
            except Exception as e:  # translated at this boundary
                err = self._translate(e, op, key)
                if isinstance(err, TransientStorageError) and i + 1 < attempts:
                    time.sleep(min(2.0, 0.05 * 2**i))
                    continue
                raise err from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _lock_args(self) -> dict[str, Any]:
        if self.object_lock_days is None:
            return {}
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.object_lock_days)
        return {"ObjectLockMode": self.object_lock_mode, "ObjectLockRetainUntilDate": until}

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _status(e) == 404:
                raise NotFound(f"S3 bucket {self.bucket!r} does not exist", bucket=self.bucket) from e
            raise self._translate(e, "open", None) from e
        except Exception as e:
            raise self._translate(e, "open", None) from e
        if self.object_lock_days is None:
            return
        try:
            cfg = self._client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError as e:
            if _code(e) != "ObjectLockConfigurationNotFoundError":
                raise self._translate(e, "open", None) from e
            enabled = False
        except Exception as e:
            raise self._translate(e, "open", None) from e
        if not enabled:
            raise UsageError(f"S3 bucket {self.bucket!r} does not have Object Lock enabled; it is needed for "
                             f"object_lock_days={self.object_lock_days}", bucket=self.bucket)

    def _same_content(self, key: str, data: memoryview) -> bool:
        """Whether the stored blob holds exactly ``data`` (resolves a 412 after a retried create)."""
        info = self.stat(key)
        if info is None or info.size != data.nbytes:
            return False
        return self.get(key) == data

    # -- the port ---------------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        obj = self._obj(key)
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        if view.nbytes > self.multipart_threshold:
            self._put_multipart(key, obj, view)
            return
        body = bytes(view)
        lock = self._lock_args()
        for i in range(self.max_attempts):
            try:
                self._client.put_object(Bucket=self.bucket, Key=obj, Body=body, IfNoneMatch="*", **lock)
                return
            except ClientError as e:
                if _status(e) == 412 and _retried(e) and self._same_content(key, view):
                    return  # our own earlier attempt created it
                if _status(e) == 409 and i + 1 < self.max_attempts:  # a concurrent conditional write in flight
                    if self.stat(key) is not None:
                        raise AlreadyExists(f"{self._where(key)} already exists", key=key, bucket=self.bucket) from e
                    time.sleep(min(2.0, 0.05 * 2**i))
                    continue
                if _status(e) == 409 and self.stat(key) is not None:
                    raise AlreadyExists(f"{self._where(key)} already exists", key=key, bucket=self.bucket) from e
                raise self._translate(e, "put", key) from e
            except Exception as e:
                raise self._translate(e, "put", key) from e

    def _put_multipart(self, key: str, obj: str, view: memoryview) -> None:
        if self.stat(key) is not None:  # cheap early refusal; the conditional complete is the real guard
            raise AlreadyExists(f"{self._where(key)} already exists", key=key, bucket=self.bucket)
        lock = self._lock_args()
        up = self._call("put", key, lambda: self._client.create_multipart_upload(
            Bucket=self.bucket, Key=obj, ChecksumAlgorithm="CRC32", **lock))
        upload_id = up["UploadId"]
        done = False
        try:
            offsets = builtins.list(range(0, view.nbytes, self.part_size))

            def upload(n: int) -> dict[str, Any]:
                off = offsets[n - 1]
                chunk = bytes(view[off: off + self.part_size])
                r = self._call("put", key, lambda: self._client.upload_part(
                    Bucket=self.bucket, Key=obj, UploadId=upload_id, PartNumber=n, Body=chunk,
                    ChecksumAlgorithm="CRC32"))
                part = {"ETag": r["ETag"], "PartNumber": n}
                if r.get("ChecksumCRC32"):
                    part["ChecksumCRC32"] = r["ChecksumCRC32"]
                return part

            workers = max(1, min(self.part_concurrency, len(offsets)))
            if workers == 1:
                parts = [upload(n) for n in range(1, len(offsets) + 1)]
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-part") as pool:
                    parts = builtins.list(pool.map(upload, range(1, len(offsets) + 1)))
            try:
                res = self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=obj, UploadId=upload_id, MultipartUpload={"Parts": parts},
                    IfNoneMatch="*")
                done = True
            except ClientError as e:
                if _status(e) == 412 and _retried(e) and self._same_content(key, view):
                    done = True
                    return
                raise self._translate(e, "put", key) from e
            except Exception as e:
                raise self._translate(e, "put", key) from e
            if lock:
                self._ensure_retention(key, obj, res.get("VersionId"), lock)
        finally:
            if not done:
                try:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=obj, UploadId=upload_id)
                except Exception:  # best effort: a lifecycle rule should abort stale uploads too
                    pass

    def _ensure_retention(self, key: str, obj: str, version_id: str | None, lock: dict[str, Any]) -> None:
        """Some servers do not carry the lock of CreateMultipartUpload over to the object: set it."""
        head = self._call("put", key, lambda: self._client.head_object(Bucket=self.bucket, Key=obj), retry=True)
        if head.get("ObjectLockMode") and head.get("ObjectLockRetainUntilDate"):
            return
        vid = version_id or head.get("VersionId")
        kw: dict[str, Any] = {"VersionId": vid} if vid else {}
        self._call("put", key, lambda: self._client.put_object_retention(
            Bucket=self.bucket, Key=obj, Retention={"Mode": lock["ObjectLockMode"],
                                                    "RetainUntilDate": lock["ObjectLockRetainUntilDate"]}, **kw))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        obj = self._obj(key)
        check_range(key, offset, length)
        if length == 0:
            if self.stat(key) is None:
                raise NotFound(f"{self._where(key)} not found", key=key, bucket=self.bucket)
            return b""
        kw: dict[str, Any] = {}
        if offset or length is not None:
            kw["Range"] = f"bytes={offset}-" + (str(offset + length - 1) if length is not None else "")

        def fetch() -> bytes:
            try:
                r = self._client.get_object(Bucket=self.bucket, Key=obj, **kw)
            except ClientError as e:
                if _status(e) == 416:  # the range starts at or past the end
                    if self.stat(key) is None:
                        raise NotFound(f"{self._where(key)} not found", key=key, bucket=self.bucket) from e
                    return b""
                raise
            body = r["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

        return self._call("get", key, fetch, retry=True)

    def stat(self, key: str) -> BlobInfo | None:
        obj = self._obj(key)
        try:
            h = self._call("stat", key, lambda: self._client.head_object(Bucket=self.bucket, Key=obj), retry=True)
        except NotFound:
            return None
        return BlobInfo(key, int(h["ContentLength"]), h["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        full = self.prefix + prefix
        token: str | None = None
        n = len(self.prefix)
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kw["ContinuationToken"] = token
            page = self._call("list", prefix or None, lambda kw=kw: self._client.list_objects_v2(**kw),  # type: ignore[misc]
                              retry=True)
            for o in page.get("Contents", []):
                key = o["Key"][n:]
                if all(s not in (".", "..") and _SEGMENT.match(s) for s in key.split("/")):
                    yield BlobInfo(key, int(o["Size"]), o["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        obj = self._obj(key)
        if self.append_only:
            raise Forbidden(f"store is append-only: delete of {self._where(key)} refused", key=key)
        try:
            self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=obj), retry=True)
        except NotFound:
            return

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._client.close()
        except Exception:
            pass
