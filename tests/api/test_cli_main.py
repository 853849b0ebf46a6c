"""The top-level ``frieze`` command loads only the group a command line names; its table must stay true."""

from __future__ import annotations

import importlib
import subprocess
import sys

from frieze.cli import main


def test_group_table_matches_the_modules() -> None:
    for name, mod, help_text in main.SUBCOMMANDS:
        sub = importlib.import_module(mod).app
        assert " ".join((sub.info.help or "").split()) == help_text, name


def test_selected_group() -> None:
    assert main._selected(["frieze", "repo", "init"]) == "repo"
    assert main._selected(["frieze", "--help"]) is None
    assert main._selected(["frieze"]) is None


def test_a_repo_command_does_not_load_the_http_client() -> None:
    code = ("import sys; sys.argv = ['frieze', 'repo', '--help']; import frieze.cli.main; "
            "print('httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
