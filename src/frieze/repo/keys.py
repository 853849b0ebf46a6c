"""Key slots: the master keys wrapped by a password through a memory-hard KDF.

Contract: a slot is a JSON object at ``keys/<slot id>`` (layout in docs/design/repository-format.md, section 3).
Opening tries every slot with the password; none opens → :class:`WrongPassword`. The last slot can never be
removed. Rotating a password is "add a slot, then remove the old one"; the master keys do not change.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from frieze.core.clock import iso, now
from frieze.core.errors import Conflict, FormatError, NotFound, WrongPassword
from frieze.repo.blobstore.base import BlobStore
from frieze.repo.crypto import MasterKeys
from frieze.repo.types import KdfParams

try:  # cryptography >= 44 with OpenSSL argon2 support
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    HAVE_ARGON2 = True
except ImportError:  # pragma: no cover - depends on the installed cryptography
    HAVE_ARGON2 = False

KEYS_PREFIX = "keys/"
_MAGIC = "frieze-keyslot"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


def derive_kek(password: str, kdf: dict[str, object]) -> bytes:
    """The 32-byte key-encryption key for ``password`` under the slot's stored KDF parameters."""
    pw = password.encode("utf-8")
    salt = _unb64(str(kdf["salt"]))
    alg = kdf.get("alg")
    if alg == "argon2id":
        if not HAVE_ARGON2:
            raise FormatError("key slot uses Argon2id, which this installation's cryptography lacks")
        return Argon2id(salt=salt, length=32, iterations=int(str(kdf["iterations"])), lanes=int(str(kdf["lanes"])),
                        memory_cost=int(str(kdf["memory_kib"]))).derive(pw)
    if alg == "scrypt":
        return Scrypt(salt=salt, length=32, n=1 << int(str(kdf["log2_n"])), r=int(str(kdf["r"])),
                      p=int(str(kdf["p"]))).derive(pw)
    raise FormatError(f"key slot: unknown KDF {alg!r}")


def _kdf_record(params: KdfParams) -> dict[str, object]:
    salt = _b64(os.urandom(16))
    if params.alg == "argon2id" and HAVE_ARGON2:
        return {"alg": "argon2id", "salt": salt, "memory_kib": params.memory_kib,
                "iterations": params.iterations, "lanes": params.lanes}
    return {"alg": "scrypt", "salt": salt, "log2_n": params.scrypt_log2_n, "r": params.scrypt_r,
            "p": params.scrypt_p}


def _ad(slot_id: str, repo_id: str) -> bytes:
    return b"FZKS" + slot_id.encode() + b"\x00" + repo_id.encode()


@dataclass(frozen=True)
class SlotInfo:
    """Public facts about one slot (no secrets)."""

    slot: str
    created: str
    kdf: str


def make_slot(repo_id: str, master: MasterKeys, password: str, params: KdfParams) -> tuple[str, bytes]:
    """Return ``(slot id, slot bytes)`` wrapping ``master`` under ``password``."""
    if not password:
        raise WrongPassword("an empty password is not allowed for a key slot")
    slot_id = secrets.token_hex(16)
    kdf = _kdf_record(params)
    kek = derive_kek(password, kdf)
    nonce = os.urandom(12)
    wrapped = AESGCM(kek).encrypt(nonce, master.bundle(), _ad(slot_id, repo_id))
    doc = {"magic": _MAGIC, "version": 1, "slot": slot_id, "repo": repo_id, "created": iso(now()), "kdf": kdf,
           "nonce": _b64(nonce), "wrapped": _b64(wrapped)}
    return slot_id, json.dumps(doc, sort_keys=True).encode()


def parse_slot(data: bytes, key: str) -> dict[str, object]:
    """Parse a slot's JSON; FormatError naming it if damaged."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("magic") != _MAGIC:
            raise ValueError("bad magic")
        if int(doc["version"]) > 1:
            raise FormatError(f"{key}: key slot version {doc['version']} is newer than this frieze supports",
                              object=key)
        for f in ("slot", "repo", "kdf", "nonce", "wrapped"):
            if f not in doc:
                raise ValueError(f"missing {f}")
        return doc
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{key}: damaged key slot ({e})", object=key) from None


def try_open_slot(doc: dict[str, object], password: str) -> MasterKeys | None:
    """The master keys if ``password`` opens this slot, else None."""
    kek = derive_kek(password, doc["kdf"])  # type: ignore[arg-type]
    try:
        bundle = AESGCM(kek).decrypt(_unb64(str(doc["nonce"])), _unb64(str(doc["wrapped"])),
                                     _ad(str(doc["slot"]), str(doc["repo"])))
    except InvalidTag:
        return None
    return MasterKeys.from_bundle(bundle)


class KeySlots:
    """Key-slot operations on a store."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def slot_keys(self) -> list[str]:
        return sorted(b.key for b in self.store.list(KEYS_PREFIX))

    def unlock(self, password: str,
               accept: Callable[[MasterKeys, str], bool] | None = None) -> tuple[MasterKeys, str, str]:
        """Try every slot; return ``(master, slot id, repo id)`` of the first that opens and that ``accept``
        (given the master keys and the slot's repository id) accepts; else WrongPassword / NotFound.

        ``accept`` lets ``open`` skip a slot left by an interrupted ``init`` of another repository."""
        keys = self.slot_keys()
        if not keys:
            raise NotFound("no key slots in this repository (not a frieze repository?)", object="keys/")
        damaged: list[str] = []
        for k in keys:
            try:
                doc = parse_slot(self.store.get(k), k)
            except FormatError:
                damaged.append(k)
                continue
            m = try_open_slot(doc, password)
            if m is not None and (accept is None or accept(m, str(doc["repo"]))):
                return m, str(doc["slot"]), str(doc["repo"])
        extra = f" ({len(damaged)} damaged slot(s) skipped: {', '.join(damaged)})" if damaged else ""
        raise WrongPassword(f"wrong password: none of the {len(keys)} key slot(s) opens with it{extra}")

    def add(self, repo_id: str, master: MasterKeys, password: str, params: KdfParams) -> str:
        slot_id, data = make_slot(repo_id, master, password, params)
        self.store.put(KEYS_PREFIX + slot_id, data)
        return slot_id

    def remove(self, slot_id: str) -> None:
        keys = self.slot_keys()
        key = KEYS_PREFIX + slot_id
        if key not in keys:
            raise NotFound(f"key slot {slot_id} does not exist", object=key)
        if len(keys) <= 1:
            raise Conflict(f"refusing to remove key slot {slot_id}: it is the last one", object=key)
        self.store.delete(key)

    def info(self) -> list[SlotInfo]:
        out = []
        for k in self.slot_keys():
            try:
                doc = parse_slot(self.store.get(k), k)
                kdf = doc["kdf"]
                out.append(SlotInfo(str(doc["slot"]), str(doc.get("created", "")),
                                    str(kdf.get("alg")) if isinstance(kdf, dict) else "?"))
            except FormatError:
                out.append(SlotInfo(k[len(KEYS_PREFIX):], "", "damaged"))
        return out


__all__ = ["HAVE_ARGON2", "KeySlots", "SlotInfo", "make_slot", "parse_slot", "try_open_slot"]
