"""`frieze bench ...`: benchmarks that print figures and ratios against the peers."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Benchmarks: figures and ratios against restic and borg, side by side.", no_args_is_help=True)
_err = Console(stderr=True, emoji=False, soft_wrap=True)  # a message is one line for logs and scripts


@app.command("repo")
def bench_repo(
    work: Path = typer.Option(Path("/var/tmp/frieze-bench"), help="Work directory (corpus, repositories)."),
    quick: bool = typer.Option(False, help="A small corpus (about 300 MB) for a fast look; targets need the full one."),
    scale: float = typer.Option(1.0, help="Size of the corpus as a fraction of the full one (text 250 MB, "
                                          "binaries 200 MB, random 150 MB, pgbench scale 130 = about 2 GiB)."),
    pgbench_scale: int | None = typer.Option(None, help="Override the pgbench scale (the database size)."),
    tools: str = typer.Option("frieze,restic,borg", help="Comma-separated tools to run."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """First backup, incremental after 1 % of the database pages changed, restore, stored bytes."""
    from frieze.bench import corpus, repo_bench

    if scale <= 0:
        raise typer.BadParameter("--scale must be positive")
    spec = corpus.CorpusSpec(text_mb=60, binary_mb=60, random_mb=40, pgbench_scale=10) if quick else \
        corpus.CorpusSpec().scaled(scale)
    if pgbench_scale is not None:
        spec = corpus.CorpusSpec(spec.text_mb, spec.binary_mb, spec.random_mb, max(1, pgbench_scale), spec.seed)
    rep = repo_bench.run(work, spec, [t.strip() for t in tools.split(",") if t.strip()],
                         lambda m: _err.print(m, highlight=False, soft_wrap=True))
    if as_json:
        print(json.dumps({"report": asdict(rep), "ratios": repo_bench.ratios(rep)}, indent=2, default=str))
    else:
        print(repo_bench.render(rep))


from frieze.cli.bench_engine import bench_engine  # noqa: E402  (the engine benchmark, its own module)

app.command("engine")(bench_engine)
