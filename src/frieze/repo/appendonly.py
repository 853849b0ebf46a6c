"""Append-only mode, persisted in the repository (docs/design/repository-format.md section 10).

Two things make a repository append-only for a frieze client:

- the store it was opened with refuses deletes (``store.append_only``: the opener asked), or
- the repository carries the **append-only marker** ``appendonly`` (written by ``Repository.init(...,
  append_only=True)`` or :meth:`frieze.repo.repository.Repository.make_append_only`): then every client
  treats the repository as append-only *whether or not it asked*. The repository wraps its store in
  :class:`AppendOnlyView`, so every delete made through it (forget, prune, key removal, lock release, stale
  lock breaking) is refused with :class:`Forbidden` before the store sees it; puts are write-once anyway, so
  nothing can be overwritten.

The marker is ``header(FZAO) | box(zstd(JSON {"time", "repo"}))`` with AD = header + ``"appendonly"``. A
marker that does not authenticate still makes the repository append-only (fail safe: a forger can only make
it stricter) and ``check`` reports it. Turning the mode off is a deliberate operator action on a store
opened *with* delete rights: :func:`clear_append_only`; it is never a side effect of a backup or prune.

What this does **not** do: stop a party that holds delete rights on the storage and uses another tool (or
deletes the marker first). Against that, the storage must enforce it: S3 Object Lock in compliance mode
(``lock_days``) and/or a bucket policy or IAM credential without ``s3:DeleteObject`` for writers; for a local
directory, OS permissions (writers run as a user that can create but not remove files, e.g. directories
owned by another user or ``chattr +a``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from frieze.core.clock import iso, now
from frieze.core.errors import AlreadyExists, Forbidden, FriezeError
from frieze.repo.blobstore.base import BlobInfo, BlobStore, Capabilities
from frieze.repo.crypto import MAGIC_APPEND_ONLY, KeyRing, open_object, seal_object

MARKER_KEY = "appendonly"


def encode_marker(ring: KeyRing, repo_id: str) -> bytes:
    body = json.dumps({"time": iso(now()), "repo": repo_id}, sort_keys=True).encode()
    return seal_object(ring, MAGIC_APPEND_ONLY, MARKER_KEY, body)


def write_marker(store: BlobStore, ring: KeyRing, repo_id: str) -> None:
    """Put the marker (idempotent: an existing marker is kept)."""
    try:
        store.put(MARKER_KEY, encode_marker(ring, repo_id))
    except AlreadyExists:
        pass


def marker_present(store: BlobStore) -> bool:
    return store.stat(MARKER_KEY) is not None


def verify_marker(store: BlobStore, ring: KeyRing, repo_id: str) -> str | None:
    """None if the marker is absent or authentic for this repository, else what is wrong with it."""
    if not marker_present(store):
        return None
    try:
        d = json.loads(open_object(ring, MAGIC_APPEND_ONLY, MARKER_KEY, store.get(MARKER_KEY)))
    except FriezeError as e:
        return e.message
    except ValueError as e:
        return f"{MARKER_KEY}: malformed body ({e})"
    if d.get("repo") != repo_id:
        return f"{MARKER_KEY}: marker of repository {d.get('repo')!r}, not {repo_id}"
    return None


def clear_append_only(store: BlobStore) -> bool:
    """Operator action: remove the marker through a store opened with delete rights. True if one was removed.

    Raises Forbidden when ``store`` itself is append-only."""
    if not marker_present(store):
        return False
    store.delete(MARKER_KEY)
    return True


class AppendOnlyView:
    """A store that refuses every delete (the repository's view when the marker is present)."""

    append_only = True

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.capabilities: Capabilities = inner.capabilities

    def __repr__(self) -> str:
        return f"AppendOnlyView({self.inner!r})"

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self.inner.put(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def stat(self, key: str) -> BlobInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        raise Forbidden(f"repository is append-only (marker {MARKER_KEY!r}): delete of {key!r} refused", key=key)

    def close(self) -> None:
        self.inner.close()
