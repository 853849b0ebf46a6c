"""frieze.cli: the command line (typer + rich). Sub-apps live one per module; main.py composes them."""
