"""The CLI's one projection of the error tree: message on stderr (or JSON on stdout), exit code from the class."""

from __future__ import annotations

import json
import sys
from typing import NoReturn

from rich.console import Console

from frieze.core.errors import FriezeError

_err = Console(stderr=True, emoji=False, soft_wrap=True)  # a message is one line for logs and scripts


def fail(exc: FriezeError, *, as_json: bool = False) -> NoReturn:
    """Print ``exc`` for a person (or a script with ``--json``) and exit with its exit code."""
    if as_json:
        sys.stdout.write(json.dumps({"error": exc.to_dict()}) + "\n")
    else:
        _err.print(f"[bold red]error[/] [dim]({exc.code})[/]: {exc.message}", highlight=False)
    raise SystemExit(exc.exit_code)
