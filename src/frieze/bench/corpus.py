"""A reproducible benchmark corpus: source-tree-like text, binaries, random data and a live PostgreSQL data
directory populated by pgbench.

Everything is derived from a fixed seed, except the binaries, which are the machine's own ELF files taken in
sorted order up to the requested size (the same on every machine of this kind).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from frieze.bench.pg import PgServer

_WORDS = " ".join(
    [
        "def class return import from self None True False if else elif for while with as try except finally",
        "raise lambda yield async await int str bytes list dict set tuple path file data repo chunk pack index",
        "snapshot tree node blob key lock lease error value result config host app volume policy backup restore",
    ]
).split(" ")


@dataclass(frozen=True)
class CorpusSpec:
    text_mb: int = 250
    binary_mb: int = 200
    random_mb: int = 150
    pgbench_scale: int = 130  # ~2 GiB of data files
    seed: int = 20261122

    def scaled(self, f: float) -> CorpusSpec:
        """The same mix at ``f`` times the size (each part at least 1 MB, pgbench scale at least 1)."""
        return CorpusSpec(text_mb=max(1, round(self.text_mb * f)), binary_mb=max(1, round(self.binary_mb * f)),
                          random_mb=max(1, round(self.random_mb * f)),
                          pgbench_scale=max(1, round(self.pgbench_scale * f)), seed=self.seed)


def _text_file(rng: random.Random, size: int) -> bytes:
    out: list[str] = []
    n = 0
    indent = 0
    while n < size:
        words = rng.choices(_WORDS, k=rng.randint(2, 12))
        tail = f"({rng.randint(0, 9999)}):" if rng.random() < 0.3 else ""
        line = "    " * indent + " ".join(words) + tail
        indent = max(0, min(4, indent + rng.choice((-1, 0, 0, 1))))
        out.append(line)
        n += len(line) + 1
    return ("\n".join(out) + "\n").encode()


def make_text(dst: Path, total_mb: int, seed: int) -> int:
    """Many small text files in nested directories (1-64 KiB each, a few larger)."""
    rng = random.Random(seed)
    total = total_mb << 20
    written = 0
    i = 0
    while written < total:
        d = dst / f"pkg{i // 200:03d}" / f"mod{(i // 20) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        size = int(rng.paretovariate(1.2) * 2048) if rng.random() < 0.97 else rng.randint(256 << 10, 2 << 20)
        size = min(size, 4 << 20)
        data = _text_file(rng, size)
        (d / f"file{i:06d}.py").write_bytes(data)
        written += len(data)
        i += 1
    return written


def _elf_files() -> Iterator[Path]:
    for root in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib"):
        for dirpath, dirnames, filenames in sorted(os.walk(root)):
            dirnames.sort()
            for f in sorted(filenames):
                p = Path(dirpath) / f
                try:
                    if p.is_symlink() or not p.is_file() or p.stat().st_size < 4096:
                        continue
                    with p.open("rb") as fh:
                        if fh.read(4) != b"\x7fELF":
                            continue
                except OSError:
                    continue
                yield p


def make_binaries(dst: Path, total_mb: int) -> int:
    total = total_mb << 20
    written = 0
    seen: set[tuple[int, int]] = set()
    for p in _elf_files():
        st = p.stat()
        if (st.st_dev, st.st_ino) in seen:
            continue
        if st.st_size > total - written + (1 << 20):
            continue  # would overshoot a small corpus many times over (a 100 MB library in a 2 MB budget)
        seen.add((st.st_dev, st.st_ino))
        rel = dst / p.relative_to("/")
        rel.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, rel)
        written += st.st_size
        if written >= total:
            break
    return written


def make_random(dst: Path, total_mb: int, seed: int) -> int:
    rng = random.Random(seed + 1)
    dst.mkdir(parents=True, exist_ok=True)
    written = 0
    i = 0
    total = total_mb << 20
    while written < total:
        size = min(total - written, rng.randint(1 << 20, 32 << 20))
        (dst / f"blob{i:04d}.bin").write_bytes(rng.randbytes(size))
        written += size
        i += 1
    return written


def make_pgdata(dst: Path, scale: int, work: Path) -> PgServer:
    """initdb + pgbench -i at ``scale`` into ``dst``; returns the stopped server handle (data dir = dst)."""
    pg = PgServer(dst, work / "pgsock")
    pg.init()
    pg.start()
    pg.pgbench("-i", "-q", "-s", str(scale))
    pg.sql("CHECKPOINT")
    pg.stop()
    return pg


def change_db_pages(pg: PgServer, fraction: float) -> None:
    """Update a contiguous ``fraction`` of pgbench_accounts rows, then checkpoint and stop: roughly that
    fraction of the heap's pages change (plus the index pages and WAL it touches)."""
    pg.start()
    n = int(pg.sql("SELECT count(*) FROM pgbench_accounts").strip())
    k = max(1, int(n * fraction))
    start = random.Random(7).randint(1, max(1, n - k))
    pg.sql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid >= {start} AND aid < {start + k}")
    pg.sql("CHECKPOINT")
    pg.stop()


def dir_size(p: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def du_bytes(p: Path) -> int:
    """Bytes actually allocated (du), for repositories."""
    out = subprocess.run(["du", "-sb", str(p)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])
