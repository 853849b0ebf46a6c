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
    ("bench", "frieze.cli.bench"),
    ("agent", "frieze.cli.agent"),
    ("server", "frieze.cli.server"),
    ("op", "frieze.cli.ops"),
]

for _name, _mod in SUBCOMMANDS:
    try:
        _m = importlib.import_module(_mod)
    except ModuleNotFoundError as e:  # a group whose module is not written yet
        if e.name != _mod:
            raise
        continue
    app.add_typer(_m.app, name=_name)


def main() -> None:
    """Entry point: run the app and project any FriezeError in one place."""
    try:
        app()
    except FriezeError as e:
        fail(e, as_json="--json" in sys.argv)


if __name__ == "__main__":
    main()
