"""A long-lived frieze process for the benchmark: the repository library called the way the coordinator's mover
calls it (``frieze.coordinator.workflows.backup.move_data``), not through a fresh CLI process.

The coordinator opens a repository once per process (:class:`frieze.coordinator.repos.Repos` caches it: the
memory-hard KDF runs once) and, for each backup, refreshes the index (``load_index``) and calls
:func:`frieze.repo.backup.backup` with the volume's previous snapshot as parent and the provider's changed
ranges. This process does the same, driven by JSON lines on stdin (one reply line on stdout each):

- ``{"op": "open", "repo": PATH, "password_file": PATH}``: open the repository and import the backup code
  (untimed: the coordinator has both since its previous backup);
- ``{"op": "backup", "paths": [...], "host": H, "tags": [...], "fixed_blocks": ["GLOB=PAGE", ...],
  "changed_ranges": PATH | null, "changed_paths": PATH | null}`` (as the CLI's ``--fixed-blocks``,
  ``--changed-ranges`` and ``--changed-paths`` take them): ``load_index``, read the files, back up (the
  coordinator hands the backup the ingest's changed paths the same way); the reply carries the
  seconds, CPU seconds and the peak RSS of this process, and the snapshot id;
- ``{"op": "exit"}``.

An error is a reply ``{"error": "..."}``; the process goes on reading.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Resident:
    def __init__(self) -> None:
        self.repo: Any = None

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "open":
            import frieze.repo.backup  # noqa: F401  (imported once, as in a coordinator that has backed up before)
            from frieze.repo.blobstore.registry import open_store
            from frieze.repo.repository import Repository

            if self.repo is not None:
                self.repo.close()
            pw = Path(req["password_file"]).read_text().rstrip("\n")
            self.repo = Repository.open(open_store(str(req["repo"])), pw)
            return {"ok": True, "repository": self.repo.id}
        if op == "backup":
            from frieze.repo.backup import backup, load_changed_paths, load_changed_ranges
            from frieze.repo.chunking import parse_fixed_blocks

            if self.repo is None:
                raise RuntimeError("backup before open")
            t0, c0 = time.perf_counter(), _cpu()
            self.repo.load_index()
            ranges, cpaths = req.get("changed_ranges"), req.get("changed_paths")
            res = backup(self.repo, list(req["paths"]), host=str(req["host"]), tags=list(req.get("tags") or []),
                         parent="auto", changed_ranges=load_changed_ranges(ranges) if ranges else None,
                         changed_paths=load_changed_paths(cpaths) if cpaths else None,
                         fixed_block_globs=parse_fixed_blocks(list(req.get("fixed_blocks") or [])) or None)
            dt, cpu = time.perf_counter() - t0, _cpu() - c0
            return {"seconds": dt, "cpu_seconds": cpu, "snapshot_id": res.snapshot_id,
                    "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "stats": res.stats.to_dict()}
        raise ValueError(f"unknown op {op!r}")


def main() -> int:
    r = Resident()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if req.get("op") == "exit":
                break
            reply = r.handle(req)
        except Exception as e:  # reported to the driver, which fails that tool's run
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    if r.repo is not None:
        r.repo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
