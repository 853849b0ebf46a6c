"""Plain data types of the repository layer (no I/O). See docs/design/repository-format.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

#: The repository format version this code writes and the highest it reads.
FORMAT_VERSION = 1


class BlobKind(IntEnum):
    """What a blob holds. Bound into each blob's associated data, so a data blob cannot pose as a tree."""

    DATA = 0
    TREE = 1


@dataclass(frozen=True)
class KdfParams:
    """Parameters of the memory-hard password KDF; stored in each key slot."""

    alg: str = "argon2id"  # or "scrypt" (used automatically when Argon2id is unavailable)
    memory_kib: int = 65536
    iterations: int = 3
    #: RFC 9106 §4, second recommended option (t=3, p=4, 64 MiB): four lanes are computed in parallel, so an
    #: open costs ~0.10 s of wall time on 2 cores instead of ~0.16 s with one lane, for the same memory
    lanes: int = 4
    scrypt_log2_n: int = 17
    scrypt_r: int = 8
    scrypt_p: int = 1

    @classmethod
    def cheap_for_tests(cls) -> KdfParams:
        """Deliberately weak parameters, for tests only (explicit opt-in)."""
        return cls(memory_kib=256, iterations=1, lanes=1, scrypt_log2_n=10)


@dataclass(frozen=True)
class RepoParams:
    """What ``Repository.init`` writes into the config (and the KDF of the first key slot)."""

    cdc_min: int = 256 * 1024
    cdc_avg: int = 1024 * 1024
    cdc_max: int = 4 * 1024 * 1024
    page_size: int = 8192
    block_size: int = 64 * 1024
    compression_level: int = 1
    pack_size: int = 16 * 1024 * 1024
    kdf: KdfParams = field(default_factory=KdfParams)
    #: Another open Repository whose dedup domain (chunk-id key and chunker seed) the new one shares,
    #: so that ``copy`` between them moves blobs without rewriting trees. Encryption keys stay separate.
    copy_id_keys_from: Any = None


@dataclass(frozen=True)
class SnapshotInfo:
    """One entry of the authenticated snapshot list (enough to list and filter without reading manifests)."""

    id: str
    seq: int
    time: datetime
    host: str
    paths: list[str]
    tags: list[str]
    tree: bytes

    def to_dict(self) -> dict[str, Any]:
        from frieze.core.clock import iso

        return {"id": self.id, "seq": self.seq, "time": iso(self.time), "host": self.host,
                "paths": list(self.paths), "tags": list(self.tags), "tree": self.tree.hex()}


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot manifest."""

    id: str
    seq: int
    time: datetime
    host: str
    paths: list[str]
    tags: list[str]
    parent: str | None
    tree: bytes
    label: Any
    stats: dict[str, Any]

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_dict(self) -> dict[str, Any]:
        from frieze.core.clock import iso

        return {"id": self.id, "seq": self.seq, "time": iso(self.time), "host": self.host,
                "paths": list(self.paths), "tags": list(self.tags), "parent": self.parent,
                "tree": self.tree.hex(), "label": self.label, "stats": self.stats}


@dataclass(frozen=True)
class IndexEntry:
    """Where one blob lives."""

    blob_id: bytes
    pack_id: bytes
    offset: int
    length: int
    raw_length: int
    kind: BlobKind
    flags: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_ZSTD)


#: Blob flag bit 0: the plaintext in the box is zstd-compressed.
FLAG_ZSTD = 1
