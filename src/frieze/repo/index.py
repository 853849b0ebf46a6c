"""Index files: blob id -> (pack, offset, length, raw length, kind, flags), encrypted.

Layout (docs/design/repository-format.md section 4): ``header | box(zstd(body))``; AD = header + store key.
Body (columnar, so it loads with numpy without a per-entry Python loop):
``u32 n_supersedes | n x 16-byte index ids | u32 n_packs | n_packs x (pack id (32) | size (u64) | u32 count) |
sum(count) x entry``, entries grouped by pack in pack-table order; entry = ``blob id (32) | kind (u8) |
flags (u8) | offset (u32) | length (u32) | raw length (u32)`` (46 bytes, also the pack trailer's layout).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from frieze.core.errors import IntegrityError
from frieze.repo.crypto import MAGIC_INDEX, KeyRing, open_object, seal_object

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

INDEX_PREFIX = "index/"
ENTRY = struct.Struct("<32sBBIII")  # 46 bytes; also the pack trailer's entry layout
PACK_HEAD = struct.Struct("<32sQI")


@cache
def dtypes() -> tuple[np.dtype[Any], np.dtype[Any]]:
    """``(ENTRY_DTYPE, PACK_DTYPE)``: numpy is imported on first use, not with this module (a process that
    opens a repository imports it on a helper thread while the key-slot KDF runs)."""
    import numpy as np

    entry = np.dtype([("id", "u1", (32,)), ("kind", "u1"), ("flags", "u1"), ("offset", "<u4"),
                      ("length", "<u4"), ("raw", "<u4")])
    pack = np.dtype([("id", "u1", (32,)), ("size", "<u8"), ("count", "<u4")])
    assert entry.itemsize == ENTRY.size and pack.itemsize == PACK_HEAD.size
    return entry, pack


def __getattr__(name: str) -> Any:
    if name == "ENTRY_DTYPE":
        return dtypes()[0]
    if name == "PACK_DTYPE":
        return dtypes()[1]
    raise AttributeError(name)


@dataclass(frozen=True)
class PackRecord:
    """One pack's blobs as an index (or a pack trailer) lists them."""

    pack_id: bytes
    size: int
    #: (blob id, kind, flags, offset, length, raw length)
    entries: list[tuple[bytes, int, int, int, int, int]]


@dataclass
class IndexArrays:
    """A decoded index body as arrays (the fast path for loading)."""

    packs: npt.NDArray[np.void]  # PACK_DTYPE
    entries: npt.NDArray[np.void]  # ENTRY_DTYPE
    supersedes: list[str]

    def records(self) -> list[PackRecord]:
        out = []
        pos = 0
        ids = self.entries["id"]
        for p in self.packs:
            n = int(p["count"])
            ents = [(ids[i].tobytes(), int(self.entries["kind"][i]), int(self.entries["flags"][i]),
                     int(self.entries["offset"][i]), int(self.entries["length"][i]), int(self.entries["raw"][i]))
                    for i in range(pos, pos + n)]
            out.append(PackRecord(p["id"].tobytes(), int(p["size"]), ents))
            pos += n
        return out


@dataclass
class IndexFile:
    packs: list[PackRecord] = field(default_factory=list)
    supersedes: list[str] = field(default_factory=list)

    def encode_body(self) -> bytes:
        parts = [struct.pack("<I", len(self.supersedes))]
        parts += [bytes.fromhex(s) for s in self.supersedes]
        parts.append(struct.pack("<I", len(self.packs)))
        parts += [PACK_HEAD.pack(p.pack_id, p.size, len(p.entries)) for p in self.packs]
        parts += [ENTRY.pack(*e) for p in self.packs for e in p.entries]
        return b"".join(parts)

    def encode(self, ring: KeyRing, key: str) -> bytes:
        return seal_object(ring, MAGIC_INDEX, key, self.encode_body())

    @classmethod
    def decode(cls, ring: KeyRing, key: str, data: bytes) -> IndexFile:
        a = decode_arrays(ring, key, data)
        return cls(a.records(), a.supersedes)


def decode_body_arrays(body: bytes, what: str) -> IndexArrays:
    import numpy as np

    ENTRY_DTYPE, PACK_DTYPE = dtypes()
    try:
        (ns,) = struct.unpack_from("<I", body, 0)
        pos = 4
        sup = [body[pos + 16 * i: pos + 16 * (i + 1)].hex() for i in range(ns)]
        pos += 16 * ns
        (np_,) = struct.unpack_from("<I", body, pos)
        pos += 4
        packs = np.frombuffer(body, dtype=PACK_DTYPE, count=np_, offset=pos)
        pos += PACK_DTYPE.itemsize * np_
        n = int(packs["count"].sum(dtype=np.uint64)) if np_ else 0
        if len(body) - pos != n * ENTRY_DTYPE.itemsize:
            raise ValueError(f"{len(body) - pos} bytes of entries, expected {n} x {ENTRY_DTYPE.itemsize}")
        entries = np.frombuffer(body, dtype=ENTRY_DTYPE, count=n, offset=pos)
        if n and int(entries["kind"].max()) > 1:
            raise ValueError("unknown blob kind")
    except (struct.error, ValueError) as e:
        raise IntegrityError(f"{what}: malformed index body ({e})", object=what) from None
    return IndexArrays(packs, entries, sup)


def decode_arrays(ring: KeyRing, key: str, data: bytes) -> IndexArrays:
    return decode_body_arrays(open_object(ring, MAGIC_INDEX, key, data), key)


def new_index_key() -> str:
    return INDEX_PREFIX + secrets.token_hex(16)


def index_id(key: str) -> str:
    return key[len(INDEX_PREFIX):]
