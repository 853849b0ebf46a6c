"""What the data path (backup, restore, ls, diff) needs from the storage core, as structural types.

``frieze.repo.repository.Repository`` and its ``RepoWriter`` satisfy these protocols; the data path
modules depend on this narrow surface only (and tests can check it with ``isinstance``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from frieze.repo.types import BlobKind, Snapshot, SnapshotInfo


class ConfigLike(Protocol):
    @property
    def cdc_min(self) -> int: ...
    @property
    def cdc_avg(self) -> int: ...
    @property
    def cdc_max(self) -> int: ...
    @property
    def page_size(self) -> int: ...
    @property
    def chunker_seed(self) -> int: ...


@runtime_checkable
class WriterLike(Protocol):
    def has(self, blob_id: bytes) -> bool: ...

    def add_blob(self, blob_id: bytes, data: bytes | memoryview, *, kind: BlobKind = BlobKind.DATA) -> bool: ...

    def commit(self, *, tree: bytes, paths: list[str], host: str, tags: list[str], label: Any,
               parent: str | None, stats: dict[str, Any]) -> str: ...

    def abort(self) -> None: ...


@runtime_checkable
class RepoLike(Protocol):
    @property
    def config(self) -> Any: ...

    def chunk_id(self, data: bytes | memoryview) -> bytes: ...

    def writer(self, *, host: str, lease_s: float = 300.0) -> Any:
        """A context manager yielding a :class:`WriterLike`."""
        ...

    def read_blob(self, blob_id: bytes) -> bytes: ...

    def has_blob(self, blob_id: bytes) -> bool: ...

    def list_snapshots(self) -> list[SnapshotInfo]: ...

    def load_snapshot(self, snap_id_or_prefix: str) -> Snapshot: ...
