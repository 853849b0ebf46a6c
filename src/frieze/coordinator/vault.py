"""The credentials vault: secrets encrypted at rest with AES-256-GCM under a master key file.

Contract:

- Master keys live in one JSON key file (mode 0600, created on first start) as ``{"current": kid,
  "keys": {kid: base64 key}}``. Nothing about the key ever comes from the environment or argv.
- :meth:`Vault.encrypt` seals under the current key; the record carries the key id, a fresh random 96-bit
  nonce and the ciphertext. The secret's name is the associated data, so a ciphertext moved to another
  name fails to open.
- Rotation without downtime: :meth:`Vault.rotate` adds a new key and makes it current while every old key
  still decrypts; :meth:`Vault.reencrypt` moves a record to the current key; an old key is retired
  (:meth:`Vault.retire`) only when no record uses it any more.
- A record that fails its tag raises :class:`~frieze.core.errors.IntegrityError` naming the secret, never
  its value. Plain values are returned as :class:`SecretStr` so that ``repr``/``str`` never show them.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from frieze.core.errors import FormatError, IntegrityError, NotFound, UsageError


class SecretStr:
    """A secret value that never shows itself in ``repr``, ``str``, logs or f-strings."""

    __slots__ = ("_v",)

    def __init__(self, value: str) -> None:
        self._v = value

    def reveal(self) -> str:
        """The plain value; call only at the point of use."""
        return self._v

    def __repr__(self) -> str:
        return "SecretStr('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"


@dataclass(frozen=True)
class Sealed:
    """One encrypted record as stored in the catalog."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


def _write_0600(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Vault:
    """Seal and open secrets. Thread-safe."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._lock = threading.Lock()
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            self._current = "k1"
            self._keys = {"k1": AESGCM.generate_key(bit_length=256)}
            self._save()
        else:
            self._load()

    # -- key file -------------------------------------------------------------------------------------
    def _load(self) -> None:
        st = self.key_file.stat()
        if st.st_mode & 0o077:
            raise UsageError(f"master key file {self.key_file} is readable by others; chmod 600 it",
                             path=str(self.key_file))
        try:
            doc = json.loads(self.key_file.read_text())
            self._keys = {k: base64.b64decode(v) for k, v in doc["keys"].items()}
            self._current = str(doc["current"])
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"master key file {self.key_file} is damaged", path=str(self.key_file)) from e
        if self._current not in self._keys or any(len(k) != 32 for k in self._keys.values()):
            raise FormatError(f"master key file {self.key_file} is damaged", path=str(self.key_file))

    def _save(self) -> None:
        doc = {"current": self._current, "keys": {k: base64.b64encode(v).decode() for k, v in self._keys.items()}}
        _write_0600(self.key_file, json.dumps(doc).encode())

    @property
    def current_key_id(self) -> str:
        return self._current

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    # -- records --------------------------------------------------------------------------------------
    def encrypt(self, name: str, value: str) -> Sealed:
        """Seal ``value`` for the secret called ``name`` under the current key."""
        with self._lock:
            kid, key = self._current, self._keys[self._current]
        nonce = secrets.token_bytes(12)
        ct = AESGCM(key).encrypt(nonce, value.encode(), name.encode())
        return Sealed(kid, nonce, ct)

    def decrypt(self, name: str, sealed: Sealed) -> SecretStr:
        """Open a record; IntegrityError if it was altered or moved, NotFound if its key is gone."""
        with self._lock:
            key = self._keys.get(sealed.key_id)
        if key is None:
            raise NotFound(f"vault key {sealed.key_id!r} for secret {name!r} is not in the key file",
                           secret=name, key_id=sealed.key_id)
        try:
            return SecretStr(AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, name.encode()).decode())
        except InvalidTag as e:
            raise IntegrityError(f"secret {name!r} failed its authentication tag", secret=name) from e

    def rotate(self) -> str:
        """Add a new key and make it current; old keys keep decrypting. Returns the new key id."""
        with self._lock:
            n = 1 + max(int(k[1:]) for k in self._keys if k[1:].isdigit())
            kid = f"k{n}"
            self._keys[kid] = AESGCM.generate_key(bit_length=256)
            self._current = kid
            self._save()
            return kid

    def reencrypt(self, name: str, sealed: Sealed) -> Sealed:
        """The same secret sealed under the current key (a no-op copy if it already is)."""
        if sealed.key_id == self._current:
            return sealed
        return self.encrypt(name, self.decrypt(name, sealed).reveal())

    def retire(self, key_id: str, in_use: set[str]) -> None:
        """Remove an old key that no record uses any more."""
        with self._lock:
            if key_id == self._current:
                raise UsageError(f"vault key {key_id!r} is current and cannot be retired", key_id=key_id)
            if key_id in in_use:
                raise UsageError(f"vault key {key_id!r} still seals secrets; re-encrypt first", key_id=key_id)
            self._keys.pop(key_id, None)
            self._save()
