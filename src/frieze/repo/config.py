"""The repository config: format version, repository id, chunker and pack parameters. Stored authenticated.

Contract: ``config`` is ``header | box(zstd(JSON))`` with AD = header + ``"config"``. A newer format version →
:class:`FormatError` before any key is needed; a bad magic → FormatError; failed authentication →
:class:`IntegrityError`; both name ``config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from frieze.core.errors import FormatError, NotFound
from frieze.repo.blobstore.base import BlobStore
from frieze.repo.crypto import MAGIC_CONFIG, KeyRing, check_header, open_object, seal_object
from frieze.repo.types import FORMAT_VERSION, RepoParams

CONFIG_KEY = "config"


@dataclass(frozen=True)
class RepoConfig:
    """The decrypted config. ``chunker_seed`` is derived from the keys (secret), never stored in clear."""

    id: str
    created: str
    cdc_min: int
    cdc_avg: int
    cdc_max: int
    page_size: int
    block_size: int
    compression_level: int
    pack_size: int
    version: int = FORMAT_VERSION
    chunker_seed: int = field(default=0, repr=False, compare=False)

    @classmethod
    def from_params(cls, repo_id: str, created: str, p: RepoParams) -> RepoConfig:
        if not (64 <= p.cdc_min <= p.cdc_avg <= p.cdc_max):
            raise ValueError("chunker parameters must satisfy 64 <= min <= avg <= max")
        if p.block_size % p.page_size:
            raise ValueError("block_size must be a multiple of page_size")
        return cls(id=repo_id, created=created, cdc_min=p.cdc_min, cdc_avg=p.cdc_avg, cdc_max=p.cdc_max,
                   page_size=p.page_size, block_size=p.block_size, compression_level=p.compression_level,
                   pack_size=p.pack_size)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "id": self.id, "created": self.created, "cdc_min": self.cdc_min,
                "cdc_avg": self.cdc_avg, "cdc_max": self.cdc_max, "page_size": self.page_size,
                "block_size": self.block_size, "compression_level": self.compression_level,
                "pack_size": self.pack_size}

    def encode(self, ring: KeyRing) -> bytes:
        return seal_object(ring, MAGIC_CONFIG, CONFIG_KEY, json.dumps(self.to_json(), sort_keys=True).encode())

    @classmethod
    def decode(cls, ring: KeyRing, data: bytes) -> RepoConfig:
        body = open_object(ring, MAGIC_CONFIG, CONFIG_KEY, data)
        try:
            d = json.loads(body)
            if int(d["version"]) > FORMAT_VERSION:
                raise FormatError(f"config: format version {d['version']} is newer than this frieze supports",
                                  object=CONFIG_KEY)
            return cls(id=str(d["id"]), created=str(d["created"]), cdc_min=int(d["cdc_min"]),
                       cdc_avg=int(d["cdc_avg"]), cdc_max=int(d["cdc_max"]), page_size=int(d["page_size"]),
                       block_size=int(d["block_size"]), compression_level=int(d["compression_level"]),
                       pack_size=int(d["pack_size"]), version=int(d["version"]), chunker_seed=ring.chunker_seed)
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"config: damaged body ({e})", object=CONFIG_KEY) from None


def read_config_bytes(store: BlobStore) -> bytes:
    """Read the config and check its header (magic, version) before any key is derived."""
    try:
        data = store.get(CONFIG_KEY)
    except NotFound:
        raise NotFound("no repository here: object 'config' is missing", object=CONFIG_KEY) from None
    check_header(data, MAGIC_CONFIG, CONFIG_KEY)
    return data
