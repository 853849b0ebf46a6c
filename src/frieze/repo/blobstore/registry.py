"""Open a blob store from a URL.

Accepted URLs::

    /srv/vault  or  relative/dir       a local directory                    (entry point "local")
    file:///srv/vault                  the same                             (entry point "local")
    memory://name                      a process-wide named in-memory store (entry point "memory")
    memory://                          a private in-memory store
    s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1&lock_days=30&lock_mode=GOVERNANCE
                                                                            (entry point "s3")

Implementations are found through the entry point group ``frieze.blobstores`` (name -> class). The
scheme ``file`` maps to the entry point ``local``; any other scheme maps to the entry point of its name. The
built-in names (``local``, ``memory``, ``s3``) are imported directly, without scanning the installed
distributions' entry points (that scan costs 50-250 ms per process on a cold cache). A
third-party class registered under a scheme the registry does not know is opened with
``cls.from_url(url, credentials=..., append_only=...)``.

Credentials are passed as an object (``credentials=`` a mapping or :class:`~.s3.S3Credentials`, or the
keywords ``access_key_id``/``secret_access_key``/``session_token``), never in the URL: a URL carrying a
user or password is refused, without echoing it. An unknown scheme, an unknown query parameter, or
credentials given to a store that takes none raise :class:`~frieze.core.errors.UsageError` naming them.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from frieze.core.errors import UsageError
from frieze.repo.blobstore.base import BlobStore

GROUP = "frieze.blobstores"

#: The built-in stores, imported directly (no entry-point scan); other schemes come from the entry points.
_BUILTIN = {
    "local": "frieze.repo.blobstore.local:LocalBlobStore",
    "memory": "frieze.repo.blobstore.memory:MemoryBlobStore",
    "s3": "frieze.repo.blobstore.s3:S3BlobStore",
}

_S3_PARAMS = {"endpoint", "region", "lock_days", "lock_mode", "multipart_threshold", "part_size"}


def _load(name: str, scheme: str) -> Any:
    if name in _BUILTIN:
        import importlib

        mod, _, attr = _BUILTIN[name].partition(":")
        return getattr(importlib.import_module(mod), attr)
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name in eps:
        return eps[name].load()
    known = sorted(set(eps) | set(_BUILTIN) | {"file"})
    raise UsageError(f"unknown blob store scheme {scheme!r} (known: {', '.join(known)})", scheme=scheme)


def _safe(url: str) -> str:
    """The URL without any user/password part, for messages."""
    p = urllib.parse.urlsplit(url)
    if p.username is None and p.password is None:
        return url
    host = p.hostname or ""
    return urllib.parse.urlunsplit((p.scheme, f"***@{host}", p.path, p.query, p.fragment))


def _credentials(credentials: Any, access_key_id: str | None, secret_access_key: str | None,
                 session_token: str | None) -> Any:
    if access_key_id is None and secret_access_key is None and session_token is None:
        return credentials
    if credentials is not None:
        raise UsageError("give S3 credentials either as credentials= or as keywords, not both")
    d: dict[str, str] = {}
    if access_key_id is not None:
        d["access_key_id"] = access_key_id
    if secret_access_key is not None:
        d["secret_access_key"] = secret_access_key
    if session_token is not None:
        d["session_token"] = session_token
    return d


def _int(name: str, value: str, url: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"store URL {url!r}: parameter {name}={value!r} is not an integer", url=url) from None


def open_store(
    url: str,
    *,
    credentials: Mapping[str, str] | Any | None = None,
    append_only: bool = False,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
) -> BlobStore:
    """Open the blob store named by ``url`` (see the module docstring)."""
    if not url:
        raise UsageError("empty blob store URL")
    creds = _credentials(credentials, access_key_id, secret_access_key, session_token)
    if "://" not in url:
        scheme, parsed = "file", urllib.parse.urlsplit("file://" + urllib.parse.quote(url))
        path = url
    else:
        parsed = urllib.parse.urlsplit(url)
        scheme = parsed.scheme.lower()
        path = urllib.parse.unquote(parsed.path)
    if parsed.username is not None or parsed.password is not None:
        raise UsageError(f"store URL {_safe(url)!r} carries credentials; pass them as an object instead",
                         url=_safe(url))
    query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
    name = "local" if scheme == "file" else scheme
    cls = _load(name, scheme)

    def refuse_creds() -> None:
        if creds is not None:
            raise UsageError(f"store URL {url!r} ({scheme}) takes no credentials", url=url)

    def refuse_query(allowed: set[str]) -> None:
        unknown = sorted(set(query) - allowed)
        if unknown:
            raise UsageError(f"store URL {_safe(url)!r}: unknown parameter(s) {', '.join(unknown)} "
                             f"(allowed: {', '.join(sorted(allowed)) or 'none'})", url=_safe(url), params=unknown)

    if scheme == "file":
        refuse_creds()
        refuse_query(set())
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"store URL {url!r}: file URLs name a local path (file:///path), not host "
                             f"{parsed.netloc!r}", url=url)
        if not path:
            raise UsageError(f"store URL {url!r} has no path", url=url)
        store: BlobStore = cls(path, append_only=append_only)
        return store
    if scheme == "memory":
        refuse_creds()
        refuse_query(set())
        mem_name = (parsed.netloc + parsed.path).strip("/") or None
        store = cls(append_only=append_only, name=mem_name)
        return store
    if scheme == "s3":
        refuse_query(_S3_PARAMS)
        bucket = parsed.netloc
        if not bucket:
            raise UsageError(f"store URL {url!r} names no bucket (s3://bucket/prefix)", url=url)
        kw: dict[str, Any] = {
            "prefix": path.strip("/"),
            "endpoint_url": query.get("endpoint") or None,
            "region": query.get("region") or None,
            "credentials": creds,
            "append_only": append_only,
        }
        if "lock_days" in query:
            kw["object_lock_days"] = _int("lock_days", query["lock_days"], url)
        if "lock_mode" in query:
            kw["object_lock_mode"] = query["lock_mode"].upper()
        for p in ("multipart_threshold", "part_size"):
            if p in query:
                kw[p] = _int(p, query[p], url)
        store = cls(bucket, **kw)
        return store
    from_url = getattr(cls, "from_url", None)
    if from_url is None:
        raise UsageError(f"blob store scheme {scheme!r} has no from_url() to open {_safe(url)!r}", scheme=scheme)
    store = from_url(url, credentials=creds, append_only=append_only)
    return store
