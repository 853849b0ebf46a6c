"""Sealed secrets in the catalog: put, get, rotate the vault key and re-encrypt every record.

Values go in as plain ``str`` once (from the API request body) and come out only as
:class:`~frieze.coordinator.vault.SecretStr`, revealed at the point of use (opening a repository,
handing an app's password to its own agent call).
"""

from __future__ import annotations

from sqlalchemy import select

from frieze.coordinator.catalog.db import Catalog
from frieze.coordinator.catalog.models import SecretRecord
from frieze.coordinator.vault import Sealed, SecretStr, Vault
from frieze.core.clock import now
from frieze.core.errors import NotFound


class SecretStore:
    def __init__(self, catalog: Catalog, vault: Vault) -> None:
        self.catalog = catalog
        self.vault = vault

    def put(self, name: str, value: str) -> None:
        sealed = self.vault.encrypt(name, value)
        with self.catalog.session() as s:
            rec = s.get(SecretRecord, name)
            if rec is None:
                s.add(SecretRecord(name=name, key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext))
            else:
                rec.key_id, rec.nonce, rec.ciphertext, rec.updated_at = (
                    sealed.key_id, sealed.nonce, sealed.ciphertext, now())

    def get(self, name: str) -> SecretStr:
        with self.catalog.session() as s:
            rec = s.get(SecretRecord, name)
            if rec is None:
                raise NotFound(f"secret {name!r} is not in the vault", secret=name)
            sealed = Sealed(rec.key_id, rec.nonce, rec.ciphertext)
        return self.vault.decrypt(name, sealed)

    def delete(self, name: str) -> None:
        with self.catalog.session() as s:
            rec = s.get(SecretRecord, name)
            if rec is not None:
                s.delete(rec)

    def rotate(self) -> dict[str, object]:
        """New current key, then every record re-encrypted one by one (readers never see a gap), then
        the old keys retired. Returns {"key_id", "reencrypted", "retired"}."""
        kid = self.vault.rotate()
        n = 0
        with self.catalog.session() as s:
            names = list(s.scalars(select(SecretRecord.name).where(SecretRecord.key_id != kid)))
        for name in names:
            with self.catalog.session() as s:
                rec = s.get(SecretRecord, name)
                if rec is None or rec.key_id == kid:
                    continue
                new = self.vault.reencrypt(name, Sealed(rec.key_id, rec.nonce, rec.ciphertext))
                rec.key_id, rec.nonce, rec.ciphertext = new.key_id, new.nonce, new.ciphertext
                n += 1
        with self.catalog.session() as s:
            in_use = set(s.scalars(select(SecretRecord.key_id).distinct()))
        retired = [k for k in self.vault.key_ids() if k != kid and k not in in_use]
        for k in retired:
            self.vault.retire(k, in_use)
        return {"key_id": kid, "reencrypted": n, "retired": retired}
