"""Cryptographic primitives of the repository: subkeys, sealed boxes, blob ids, compression, headers.

Contracts (docs/design/repository-format.md section 3):

- A sealed box is ``salt(16) | nonce(12) | ciphertext | tag(16)``; its AES-256-GCM key is
  ``BLAKE3-keyed(aead_root, salt)``. :class:`SealSession` encrypts many boxes under one random salt with a
  96-bit counter nonce (never repeats; a new salt every 2**32 boxes); :func:`seal` uses a fresh salt and a
  random nonce for one-off objects. No (key, nonce) pair is ever used twice.
- Associated data binds every box to its kind and id (blobs) or to its header and store key (objects).
- :func:`open_box` raises :class:`frieze.core.errors.IntegrityError` naming ``what`` on any mismatch.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from frieze.core.errors import FormatError, IntegrityError
from frieze.repo.types import FORMAT_VERSION, BlobKind

SALT_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
BOX_OVERHEAD = SALT_LEN + NONCE_LEN + TAG_LEN
HEADER_LEN = 8
_MAX_SESSION_BOXES = 1 << 32

MAGIC_CONFIG = b"FZCF"
MAGIC_PACK = b"FZPK"
MAGIC_INDEX = b"FZIX"
MAGIC_SNAPSHOT = b"FZSN"
MAGIC_SNAPLIST = b"FZSL"
MAGIC_LOCK = b"FZLK"
MAGIC_GARBAGE = b"FZGB"
MAGIC_APPEND_ONLY = b"FZAO"


def hkdf(master: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 without salt (the master is uniformly random)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


@dataclass(frozen=True)
class MasterKeys:
    """The two wrapped secrets and everything derived from them. Never logged, never printed."""

    enc_master: bytes
    id_master: bytes

    def __post_init__(self) -> None:
        if len(self.enc_master) != 32 or len(self.id_master) != 32:
            raise ValueError("master keys are 32 bytes each")

    @classmethod
    def generate(cls) -> MasterKeys:
        return cls(os.urandom(32), os.urandom(32))

    def bundle(self) -> bytes:
        return self.enc_master + self.id_master

    @classmethod
    def from_bundle(cls, b: bytes) -> MasterKeys:
        return cls(b[:32], b[32:64])

    def __repr__(self) -> str:  # never show the secrets
        return "MasterKeys(<secret>)"


class KeyRing:
    """Derived subkeys plus thread-safe helpers (blob ids, one-off seal/open)."""

    def __init__(self, master: MasterKeys) -> None:
        self.aead_root = hkdf(master.enc_master, b"frieze/v1/aead")
        self.id_key = hkdf(master.id_master, b"frieze/v1/chunk-id")
        seed = int.from_bytes(hkdf(master.id_master, b"frieze/v1/chunker-seed", 8), "little")
        self.chunker_seed = (seed & ((1 << 63) - 1)) | 1
        self._openers: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "KeyRing(<secret>)"

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """Keyed BLAKE3 (32 bytes) of ``data``. Thread-safe; releases the GIL on large inputs."""
        return blake3.blake3(data, key=self.id_key).digest()

    def subkey(self, salt: bytes) -> AESGCM:
        with self._lock:
            a = self._openers.get(salt)
            if a is not None:
                self._openers.move_to_end(salt)
                return a
        a = AESGCM(blake3.blake3(salt, key=self.aead_root).digest())
        with self._lock:
            self._openers[salt] = a
            while len(self._openers) > 256:
                self._openers.popitem(last=False)
        return a

    def seal(self, plaintext: bytes | memoryview, ad: bytes) -> bytes:
        """A one-off box: fresh random salt (so a fresh subkey) and random nonce."""
        salt = os.urandom(SALT_LEN)
        nonce = os.urandom(NONCE_LEN)
        a = AESGCM(blake3.blake3(salt, key=self.aead_root).digest())
        return salt + nonce + a.encrypt(nonce, plaintext, ad)

    def open(self, box: bytes | memoryview, ad: bytes, what: str) -> bytes:
        """Authenticate and decrypt ``box``; IntegrityError naming ``what`` on any mismatch."""
        mv = memoryview(box)
        if len(mv) < BOX_OVERHEAD:
            raise IntegrityError(f"{what}: too short to be an encrypted object ({len(mv)} bytes)", object=what)
        salt = bytes(mv[:SALT_LEN])
        nonce = bytes(mv[SALT_LEN:SALT_LEN + NONCE_LEN])
        try:
            return self.subkey(salt).decrypt(nonce, mv[SALT_LEN + NONCE_LEN:], ad)
        except InvalidTag:
            raise IntegrityError(f"{what}: authentication failed (damaged, swapped or forged)", object=what) from None

    def session(self) -> SealSession:
        return SealSession(self)


class SealSession:
    """Many boxes under one random salt with counter nonces. Thread-safe."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._lock = threading.Lock()
        self._new_salt()

    def _new_salt(self) -> None:
        self.salt = os.urandom(SALT_LEN)
        self._aead = AESGCM(blake3.blake3(self.salt, key=self._ring.aead_root).digest())
        self._counter = 0

    def seal_parts(self, plaintext: bytes | memoryview, ad: bytes) -> tuple[bytes, bytes]:
        """Encrypt; return ``(salt+nonce, ciphertext+tag)`` so a caller can append without another copy."""
        with self._lock:
            if self._counter >= _MAX_SESSION_BOXES:
                self._new_salt()
            n = self._counter
            self._counter += 1
            salt, aead = self.salt, self._aead
        nonce = n.to_bytes(NONCE_LEN, "big")
        return salt + nonce, aead.encrypt(nonce, plaintext, ad)

    def seal(self, plaintext: bytes | memoryview, ad: bytes) -> bytes:
        p, c = self.seal_parts(plaintext, ad)
        return p + c


def blob_ad(kind: BlobKind | int, flags: int, blob_id: bytes) -> bytes:
    """Associated data of a blob box: binds kind, flags and id."""
    return b"FZBL" + bytes((int(kind), flags)) + blob_id


# --- compression -------------------------------------------------------------------------------------------

_tls = threading.local()


def compress(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """zstd in the caller's thread (one compressor per thread; the library releases the GIL)."""
    cs: dict[int, zstandard.ZstdCompressor] | None = getattr(_tls, "c", None)
    if cs is None:
        cs = _tls.c = {}
    c = cs.get(level)
    if c is None:
        c = cs[level] = zstandard.ZstdCompressor(level=level)
    out: bytes = c.compress(data)
    return out


def decompress(data: bytes | memoryview, raw_length: int, what: str) -> bytes:
    d: zstandard.ZstdDecompressor | None = getattr(_tls, "d", None)
    if d is None:
        d = _tls.d = zstandard.ZstdDecompressor()
    try:
        out: bytes = d.decompress(data, max_output_size=raw_length)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{what}: decompression failed ({e})", object=what) from None
    if len(out) != raw_length:
        raise IntegrityError(f"{what}: decompressed to {len(out)} bytes, expected {raw_length}", object=what)
    return out


# --- object headers ----------------------------------------------------------------------------------------

def header(magic: bytes) -> bytes:
    return magic + struct.pack("<HH", FORMAT_VERSION, 0)


def check_header(data: bytes | memoryview, magic: bytes, what: str) -> None:
    """FormatError naming ``what`` for a wrong magic or a format version newer than ours."""
    if len(data) < HEADER_LEN:
        raise FormatError(f"{what}: truncated ({len(data)} bytes), not a frieze object", object=what)
    if bytes(data[:4]) != magic:
        raise FormatError(f"{what}: bad magic {bytes(data[:4])!r}, expected {magic!r} (damaged or not frieze)",
                          object=what)
    (version,) = struct.unpack_from("<H", data, 4)
    if version > FORMAT_VERSION:
        raise FormatError(f"{what}: format version {version} is newer than this frieze supports "
                          f"({FORMAT_VERSION}); upgrade frieze", object=what, version=version)
    if version < 1:
        raise FormatError(f"{what}: invalid format version {version}", object=what)


def seal_object(ring: KeyRing, magic: bytes, key: str, body: bytes) -> bytes:
    """Header + box(zstd(body)), AD = header + store key."""
    h = header(magic)
    return h + ring.seal(compress(body, 3), h + key.encode())


def open_object(ring: KeyRing, magic: bytes, key: str, data: bytes, max_size: int = 1 << 31) -> bytes:
    check_header(data, magic, key)
    h = bytes(data[:HEADER_LEN])
    z = ring.open(memoryview(data)[HEADER_LEN:], h + key.encode(), key)
    try:
        out: bytes = zstandard.ZstdDecompressor().decompress(z, max_output_size=max_size)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"{key}: body does not decompress ({e})", object=key) from None
    return out


def pack_hash(data: bytes | bytearray | memoryview) -> bytes:
    """Pack id: unkeyed BLAKE3-256 of the pack bytes."""
    return blake3.blake3(data).digest()


def object_hash(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()
