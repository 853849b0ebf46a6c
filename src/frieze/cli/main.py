"""The ``frieze`` command. Each sub-command group is a module exposing ``app: typer.Typer``."""

from __future__ import annotations

import importlib
import os
import sys

# typer builds its option parsers with pydantic, whose first use scans every installed distribution's entry
# points for pydantic plugins (~30 ms per run); frieze uses none
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer

from frieze.cli.errors import fail
from frieze.core.errors import FriezeError

app = typer.Typer(
    name="frieze",
    help="Application-consistent snapshot backups of a fleet, from one place.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

#: (command name, module, one-line help). Each module defines ``app``. Only the group a command line names
#: is imported (a ``frieze repo`` run does not pay for the HTTP client, and the reverse); the top-level help
#: and any other use import them all.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("repo", "frieze.cli.repo", "The repository on its own: init, backup, restore, ls, snapshots, diff, check, "
                                "forget, prune, copy, keys."),
    ("server", "frieze.cli.server", "The coordinator: REST API, workflows, scheduler, mover."),
    ("agent", "frieze.cli.agent", "The per-host agent: mutual-TLS API for the coordinator."),
    ("host", "frieze.cli.hosts", "Hosts and their agents."),
    ("app", "frieze.cli.apps", "Applications."),
    ("volume", "frieze.cli.volumes", "Volumes (a directory on a host, with its snapshot provider)."),
    ("repository", "frieze.cli.repositories", "Repositories (the vault)."),
    ("pset", "frieze.cli.psets", "Protection sets."),
    ("policy", "frieze.cli.policies", "Policies."),
    ("restore-point", "frieze.cli.restore_points", "Restore points."),
    ("token", "frieze.cli.tokens", "API tokens and the vault key."),
    ("provision", "frieze.cli.provision", "Declarative provisioning: apply a JSON file of hosts, volumes, "
                                          "repositories, apps, protection sets and policies as one operation."),
    ("op", "frieze.cli.ops", "Operations: backup, restore, recover, access, status, list, cancel, logs, diagnostics."),
    ("bench", "frieze.cli.bench", "Benchmarks: figures and ratios against restic and borg, side by side."),
]


def _selected(argv: list[str]) -> str | None:
    """The group the command line names (its first word), or None: then every group is loaded."""
    names = {n for n, _m, _h in SUBCOMMANDS}
    return argv[1] if len(argv) > 1 and argv[1] in names else None


_sel = _selected(sys.argv)
for _name, _mod, _help in SUBCOMMANDS:
    if _sel is None or _sel == _name:
        app.add_typer(importlib.import_module(_mod).app, name=_name)
    else:  # never run: this line names another group; it only keeps the group listed
        app.add_typer(typer.Typer(help=_help), name=_name)


def main() -> None:
    """Entry point: run the app and project any FriezeError in one place."""
    try:
        app()
    except FriezeError as e:
        fail(e, as_json="--json" in sys.argv)


if __name__ == "__main__":
    main()
