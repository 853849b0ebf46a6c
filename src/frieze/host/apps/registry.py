"""Finding app plug-ins: the ``frieze.apps`` entry-point group (one class per kind, constructible with no
arguments). If the group is missing (a stale editable install), the built-in plug-ins are used."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from frieze.core.errors import NotFound
from frieze.host.apps.base import AppPlugin

GROUP = "frieze.apps"
BUILTIN = {
    "postgres": "frieze.host.apps.postgres:PostgresPlugin",
    "mariadb": "frieze.host.apps.mariadb:MariaDBPlugin",
    "sqlite": "frieze.host.apps.sqlite:SQLitePlugin",
    "redis": "frieze.host.apps.redis:RedisPlugin",
    "files": "frieze.host.apps.files:FilesPlugin",
    "script": "frieze.host.apps.script:ScriptPlugin",
}


def declared() -> dict[str, str]:
    """kind → "module:Class" of every registered plug-in."""
    eps = {e.name: e.value for e in entry_points(group=GROUP)}
    return eps or dict(BUILTIN)


def load(kind: str) -> AppPlugin:
    """A new instance of the plug-in for ``kind``; :class:`NotFound` for an unknown kind."""
    ref = declared().get(kind)
    if ref is None:
        raise NotFound(f"unknown app kind {kind!r} (known: {', '.join(sorted(declared()))})", kind=kind)
    mod, _, cls = ref.partition(":")
    plugin = getattr(importlib.import_module(mod), cls)()
    if not isinstance(plugin, AppPlugin):
        raise NotFound(f"app plug-in {ref} does not implement the AppPlugin port", kind=kind)
    return plugin
