"""The ``frieze`` command. Each sub-command group is a module exposing ``app: typer.Typer``."""

from __future__ import annotations

import importlib
import sys

import typer

from frieze.cli.errors import fail
from frieze.core.errors import FriezeError

app = typer.Typer(
    name="frieze",
    help="Application-consistent snapshot backups of a fleet, from one place.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

#: (command name, module). Each module defines ``app``.
SUBCOMMANDS: list[tuple[str, str]] = [
    ("repo", "frieze.cli.repo"),
    ("server", "frieze.cli.server"),
    ("agent", "frieze.cli.agent"),
    ("host", "frieze.cli.hosts"),
    ("app", "frieze.cli.apps"),
    ("volume", "frieze.cli.volumes"),
    ("repository", "frieze.cli.repositories"),
    ("pset", "frieze.cli.psets"),
    ("policy", "frieze.cli.policies"),
    ("restore-point", "frieze.cli.restore_points"),
    ("token", "frieze.cli.tokens"),
    ("op", "frieze.cli.ops"),
    ("bench", "frieze.cli.bench"),
]

for _name, _mod in SUBCOMMANDS:
    app.add_typer(importlib.import_module(_mod).app, name=_name)


def main() -> None:
    """Entry point: run the app and project any FriezeError in one place."""
    try:
        app()
    except FriezeError as e:
        fail(e, as_json="--json" in sys.argv)


if __name__ == "__main__":
    main()
