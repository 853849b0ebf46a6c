"""Repositories as the coordinator holds them: URL in the catalog, password and S3 keys in the vault.

Only the coordinator opens a repository (the mover); agents never see a password, a key or an S3 credential.
Registering a repository opens it (or creates it with ``init``) before anything is recorded, so a wrong
password or an unreachable store is a clear error that changes nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frieze.coordinator.catalog.db import Catalog
from frieze.coordinator.catalog.models import Repository as RepoRow
from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.resources import Resources
from frieze.coordinator.secrets_store import SecretStore
from frieze.core.errors import AlreadyExists, Conflict, Forbidden, FriezeError, NotFound, StorageError, UsageError
from frieze.core.ids import new_id

#: the S3 credentials a repository may have sealed beside its password (``repo/<id>/<key>``)
S3_KEYS = ("access_key_id", "secret_access_key")


def _open_store(url: str, s3: dict[str, str]) -> Any:
    """The blob store for ``url``: ``file:///path`` (or a plain absolute path) or
    ``s3://bucket/prefix?endpoint=https://...&region=...`` with the sealed S3 keys.

    The coordinator accepts only absolute locations: a relative path would resolve against the server's
    working directory, which no caller can see or predict."""
    from urllib.parse import urlsplit

    from frieze.repo.blobstore.registry import open_store

    if url.startswith("/"):
        url = "file://" + url
    parts = urlsplit(url)
    if "://" not in url or parts.scheme not in ("file", "s3"):
        raise UsageError(f"repository URL {url!r}: use file:///absolute/path, an absolute path or "
                         "s3://bucket/prefix", url=url)
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise UsageError(f"repository URL {url!r} needs an absolute path", url=url)
    try:
        return open_store(url, credentials=dict(s3)) if s3 else open_store(url)
    except FriezeError:
        raise
    except TypeError as e:
        raise UsageError(f"repository URL {url!r} does not take these credentials", url=url) from e
    except Exception as e:  # translate at the boundary; never echo credentials
        raise StorageError(f"cannot open the store at {url!r}: {type(e).__name__}", url=url) from e


def file_path(url: str) -> str | None:
    """The local path of a file repository URL (``file:///p`` or ``/p``), None for other schemes."""
    from urllib.parse import unquote, urlsplit

    if url.startswith("/"):
        return url
    parts = urlsplit(url)
    return unquote(parts.path) if parts.scheme == "file" and parts.netloc in ("", "localhost") else None


def check_roots(url: str, roots: list[Path]) -> None:
    """Refuse a file repository outside the configured roots (nothing is created then)."""
    path = file_path(url)
    if not roots or path is None or not path.startswith("/"):
        return
    real = Path(os.path.realpath(path))
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise Forbidden(f"repository path {path!r} is outside the coordinator's repository roots "
                        f"({', '.join(str(r) for r in roots)})", url=url)


def open_repo(store: Any, password: str, *, init: bool = False, params: Any = None) -> Any:
    """Open (or create) the repository on ``store``. WrongPassword, NotFound, StorageError as appropriate."""
    from frieze.repo.repository import Repository

    try:
        if init:
            return Repository.init(store, password, params=params)
        return Repository.open(store, password)
    except BaseException:
        store.close()
        raise


class Repos:
    """Opened repositories are cached per catalog id (opening runs the memory-hard KDF once per process)."""

    def __init__(self, catalog: Catalog, secrets: SecretStore, config: CoordinatorConfig) -> None:
        self.catalog = catalog
        self.secrets = secrets
        self.config = config
        #: how a URL becomes a blob store (tests may replace it)
        self.store_opener: Callable[[str, dict[str, str]], Any] = _open_store
        #: RepoParams for ``init`` (None: the library's defaults)
        self.init_params: Any = None
        self._cache: dict[str, Any] = {}
        #: repositories replaced by a rotation (operations may still use them); closed with the others
        self._retired: list[Any] = []
        self._lock = threading.Lock()
        self._rotate_lock = threading.Lock()

    def register(self, resources: Resources, name: str, url: str, password: str, init: bool,
                 s3: dict[str, str], max_concurrent: int = 2, *, repo_id: str | None = None,
                 resume: bool = False) -> dict[str, Any]:
        """Open or create the repository first; record it (and seal its secrets) only if that worked.

        ``repo_id``: the catalog id to use (provisioning assigns ids up front). ``resume``: a re-run of an
        interrupted registration: with ``init``, a repository already at ``url`` is opened with ``password``
        instead (it is the one the first run created, or one the password opens)."""
        resources.check_repository_name_free(name)
        if not password:
            raise UsageError("a repository password must not be empty")
        check_roots(url, self.config.repository_roots)
        try:
            repo = open_repo(self.store_opener(url, s3), password, init=init, params=self.init_params)
        except AlreadyExists:
            if not (init and resume):
                raise
            repo = open_repo(self.store_opener(url, s3), password)
        rid = repo_id or new_id("repo")
        self.secrets.put(f"repo/{rid}/password", password)
        for k, v in s3.items():
            self.secrets.put(f"repo/{rid}/{k}", v)
        try:
            view = resources.create_repository(name, url, sorted(s3), max_concurrent=max_concurrent, id=rid)
        except BaseException:
            self.drop_secrets(rid)
            repo.close()
            raise
        with self._lock:
            self._cache[view["id"]] = repo
        return view

    def drop_secrets(self, repo_id: str) -> None:
        """Delete the sealed secrets of catalog repository ``repo_id`` (its password and S3 keys)."""
        for k in ("password", *S3_KEYS):
            self.secrets.delete(f"repo/{repo_id}/{k}")

    def forget(self, repo_id: str) -> None:
        """Close and drop the cached handle of ``repo_id`` (its catalog row is being removed)."""
        with self._lock:
            repo = self._cache.pop(repo_id, None)
        if repo is not None:
            repo.close()

    @contextmanager
    def open(self, repo_id: str) -> Iterator[Any]:
        """The repository of catalog id ``repo_id``, opened with its sealed password (cached)."""
        with self._lock:
            cached = self._cache.get(repo_id)
        if cached is not None:
            cached.load_index()
            yield cached
            return
        with self.catalog.session() as s:
            row = s.get(RepoRow, repo_id)
            if row is None:
                raise NotFound(f"repository {repo_id!r} does not exist", repository=repo_id)
            url, pref, refs = row.url, row.password_ref, dict(row.secret_refs)
        password = self.secrets.get(pref)
        s3 = {k: self.secrets.get(v).reveal() for k, v in refs.items()}
        repo = open_repo(self.store_opener(url, s3), password.reveal())
        with self._lock:
            repo = self._cache.setdefault(repo_id, repo)
        yield repo

    # -- rotation without downtime -------------------------------------------------------------------
    def rotate_password(self, repo_id: str, new_password: str) -> dict[str, Any]:
        """Change the repository password through its key slots, without stopping anything:

        1. find the slot the current (sealed) password opens; 2. add a slot for the new password (both
        open the repository now, so any coordinator opening it meanwhile succeeds with either); 3. seal
        the new password in the vault; 4. remove the old slot. The master keys do not change, so backups
        running on an open repository go on. A failure before 3 removes the new slot again (nothing
        changed); a failure in 4 leaves the old slot (reported, the old password still opens)."""
        from frieze.repo.keys import KeySlots

        if not new_password:
            raise UsageError("a repository password must not be empty")
        with self._rotate_lock, self.open(repo_id) as repo:
            pref = self._row(repo_id)[1]
            current = self.secrets.get(pref).reveal()
            if current == new_password:
                raise UsageError("the new repository password is the current one", repository=repo_id)
            slots = KeySlots(repo.store)
            _m, old_slot, _rid = slots.unlock(current, lambda _m, rid: rid == repo.id)
            kdf = getattr(self.init_params, "kdf", None)
            new_slot = repo.add_key(new_password, kdf)
            try:
                self.secrets.put(pref, new_password)
            except BaseException:
                repo.remove_key(new_slot)
                raise
            removed = True
            try:
                repo.remove_key(old_slot)
            except FriezeError:
                removed = False
            repo.slot_id = new_slot
        return {"slot": new_slot, "retired_slot": old_slot if removed else None, "old_slot_removed": removed}

    def rotate_s3(self, repo_id: str, s3: dict[str, str]) -> dict[str, Any]:
        """Replace the repository's S3 keys: the new keys must open the repository (same repository id)
        before they are sealed; then this coordinator's open repository is swapped for one over the new
        keys (operations already holding the old one finish with it). Revoke the old keys at the provider
        afterwards. Nothing changes if the new keys do not work."""
        if not s3.get("access_key_id") or not s3.get("secret_access_key"):
            raise UsageError("S3 rotation needs both access_key_id and secret_access_key")
        with self._rotate_lock, self.open(repo_id) as old:
            url, pref, refs = self._row(repo_id)
            if file_path(url) is not None:
                raise UsageError(f"repository {repo_id} is not on S3; it has no S3 keys", repository=repo_id)
            fresh = open_repo(self.store_opener(url, dict(s3)), self.secrets.get(pref).reveal())
            if fresh.id != old.id:
                fresh.close()
                raise Conflict("the new S3 keys reach another repository", repository=repo_id)
            for k, v in s3.items():
                self.secrets.put(f"repo/{repo_id}/{k}", v)
            if set(refs) != set(s3):
                with self.catalog.session() as s:
                    row = s.get(RepoRow, repo_id)
                    assert row is not None
                    row.secret_refs = {k: f"repo/{repo_id}/{k}" for k in sorted(s3)}
            with self._lock:
                self._cache[repo_id] = fresh
                self._retired.append(old)
        return {"keys": sorted(s3)}

    def _row(self, repo_id: str) -> tuple[str, str, dict[str, Any]]:
        with self.catalog.session() as s:
            row = s.get(RepoRow, repo_id)
            if row is None:
                raise NotFound(f"repository {repo_id!r} does not exist", repository=repo_id)
            return row.url, row.password_ref, dict(row.secret_refs)

    def close(self) -> None:
        with self._lock:
            repos, self._cache = list(self._cache.values()), {}
            repos += self._retired
            self._retired = []
        for r in repos:
            r.close()
