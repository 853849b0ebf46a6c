"""``frieze bench engine``: the workflow engine's per-task overhead and operations per second, on SQLite (WAL)
and PostgreSQL (a private server unless ``--pg-url``). Prints the ``RESULT ENGINE-BENCH`` lines of
:mod:`frieze.engine.bench`.

Registered in the ``bench`` group (src/frieze/cli/bench.py); also runnable as
``python -m frieze.cli.bench_engine`` (or ``python -m frieze.engine.bench``).
"""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Workflow engine benchmark: per-task overhead and ops/s on SQLite and PostgreSQL.")


@app.command("engine")
def bench_engine(
    pg_url: str | None = typer.Option(None, "--pg-url", help="PostgreSQL URL (default: start a private server)."),
    no_pg: bool = typer.Option(False, "--no-pg", help="SQLite only."),
    ops: int = typer.Option(200, min=1, help="Operations for the ops/s figure."),
    rounds: int = typer.Option(3, min=1, help="Rounds of the per-task figures (median and min-max range)."),
    as_json: bool = typer.Option(False, "--json", help="Also print the figures as JSON on stdout."),
) -> None:
    """Per-task overhead and sustained operations per second of the workflow engine (target < 10 ms per task)."""
    from frieze.engine import bench

    out = bench.run(pg_url=pg_url, no_pg=no_pg, ops=ops, rounds=rounds)
    if as_json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    app()
