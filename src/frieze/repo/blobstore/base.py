"""The blob store port: the only way the repository touches storage.

Contract (every implementation must pass ``tests/repo/blobstore/test_conformance.py``):

Keys
    ASCII, ``/``-separated, each segment non-empty and made of ``[A-Za-z0-9._-]``; no segment is
    ``.`` or ``..``; a segment has at most 255 characters (a file name on every POSIX file system) and
    the key at most 1024. A bad key raises :class:`frieze.core.errors.UsageError`. A key should not be a
    ``/``-prefix of another (``a`` and ``a/b``): the local store refuses the second with
    :class:`frieze.core.errors.Conflict` (a file cannot also be a directory); the others accept both.

Write-once
    :meth:`BlobStore.put` creates a blob only if the key is absent (create-if-absent). If the key exists,
    it raises :class:`frieze.core.errors.AlreadyExists` and the existing blob is left byte for byte as it
    was: an implementation never overwrites or truncates a blob. A put is atomic: a reader sees the whole
    blob or no blob, never a prefix, even if the writer is killed at any moment. When ``put`` returns,
    the blob is durable (local: fsync of the file and of its directory; S3: the PUT returned 200).

Read-after-write
    Once ``put`` has returned, ``get``, ``stat`` and ``list`` in the same or another process see the
    blob. After ``delete`` has returned, they do not.

Reads
    ``get(key)`` returns the whole blob; ``get(key, offset, length)`` a byte range (a range past the end
    is truncated to the end). A missing key raises :class:`frieze.core.errors.NotFound`. Reads are
    idempotent and may be retried.

Delete
    ``delete`` is idempotent: deleting a missing key is not an error. A store opened append-only
    (``append_only=True``) refuses every delete with :class:`frieze.core.errors.Forbidden`.

Errors
    Implementations translate their library's exceptions at this boundary:
    ``NotFound`` (missing key, permanent), ``AlreadyExists`` (permanent), ``NoSpace`` (ENOSPC, not
    retryable until space is freed), ``TransientStorageError`` (timeouts, throttling, resets: retryable),
    ``StorageError`` (anything else, permanent); plus the caller's mistakes: ``UsageError`` (bad key or
    range; ``Conflict`` for a key colliding with another's directory in the local store) and ``Forbidden``
    (delete on an append-only store). Nothing else escapes. ``NoSpace`` names ENOSPC and the key, and the
    failed put leaves nothing behind. A store resolves its own ambiguous retries: a create whose answer was
    lost and whose retry finds the key present succeeds if the stored bytes are the caller's.

Ranges
    A negative ``offset`` or ``length`` is a ``UsageError``.

Capabilities are plain data (:class:`Capabilities`), so callers branch on data, not on types.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from frieze.core.errors import UsageError

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def check_key(key: str) -> str:
    """Validate a blob key against the contract above and return it."""
    if not key or len(key) > 1024:
        raise UsageError(f"bad blob key {key!r}: empty or longer than 1024 characters", key=key)
    for seg in key.split("/"):
        if seg in ("", ".", "..") or len(seg) > 255 or not _SEGMENT.match(seg):
            raise UsageError(f"bad blob key {key!r}: segment {seg!r} is not allowed", key=key)
    return key


@dataclass(frozen=True)
class Capabilities:
    """What a store can do, as data."""

    name: str
    #: The store enforces create-if-absent atomically itself (local: link/rename-noreplace; S3: If-None-Match).
    atomic_create: bool = True
    #: Writes are held under a retention lock (S3 Object Lock): nothing can delete them before it ends.
    object_lock: bool = False
    #: Durable across processes (False for the in-memory store).
    persistent: bool = True
    #: Efficient ranged reads.
    ranged_reads: bool = True


@dataclass(frozen=True)
class BlobInfo:
    """One listed blob."""

    key: str
    size: int
    #: Seconds since the epoch when the blob was written, as the store reports it (may be coarse).
    mtime: float


@runtime_checkable
class BlobStore(Protocol):
    """A flat namespace of write-once blobs. See the module docstring for the full contract."""

    capabilities: Capabilities
    append_only: bool

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Create blob ``key`` with ``data`` if absent; else raise AlreadyExists. Durable on return."""
        ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the blob, or ``length`` bytes from ``offset``. NotFound if missing."""
        ...

    def stat(self, key: str) -> BlobInfo | None:
        """Return the blob's info, or None if it does not exist."""
        ...

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix`` (a plain string prefix), in no set order."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; missing is fine. Forbidden when the store is append-only."""
        ...

    def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...
