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
from frieze.core.errors import Forbidden, FriezeError, NotFound, StorageError, UsageError


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
        self._lock = threading.Lock()

    def register(self, resources: Resources, name: str, url: str, password: str, init: bool,
                 s3: dict[str, str], max_concurrent: int = 2) -> dict[str, Any]:
        """Open or create the repository first; record it (and seal its secrets) only if that worked."""
        resources.check_repository_name_free(name)
        if not password:
            raise UsageError("a repository password must not be empty")
        check_roots(url, self.config.repository_roots)
        repo = open_repo(self.store_opener(url, s3), password, init=init, params=self.init_params)
        view = resources.create_repository(name, url, sorted(s3), max_concurrent=max_concurrent)
        with self._lock:
            self._cache[view["id"]] = repo
        self.secrets.put(f"repo/{view['id']}/password", password)
        for k, v in s3.items():
            self.secrets.put(f"repo/{view['id']}/{k}", v)
        return view

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

    def close(self) -> None:
        with self._lock:
            repos, self._cache = list(self._cache.values()), {}
        for r in repos:
            r.close()
