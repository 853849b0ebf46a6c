"""The quick start as a test: coordinator, agent and a SQLite WAL app as separate processes, an
application-consistent backup through the API, a restore to a new place, checks; plus canary secrets.

While every process still runs, a canary repository password must not appear in any process's
``/proc/*/cmdline`` nor in the environment of any process the demo started; afterwards not in any log,
nor in plain text anywhere in the coordinator's state (catalog, keys) or the agent's state.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from frieze import demo

pytestmark = pytest.mark.timeout(240)

CANARY = "CANARY-demo-repo-pw-5e1f0a77"


def _descendants(pids: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return out


def test_demo_end_to_end_with_canary(tmp_path: Path) -> None:
    scanned = {"cmdline": 0, "environ": 0}
    hits: list[str] = []

    def probe(pids: list[int]) -> None:
        assert len(pids) == 3  # coordinator, app, agent
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if CANARY.encode() in (d / "cmdline").read_bytes():
                        hits.append(f"/proc/{d.name}/cmdline")
                    scanned["cmdline"] += 1
                except OSError:
                    pass
        for pid in _descendants(pids):
            try:
                if CANARY.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    hits.append(f"/proc/{pid}/environ")
                scanned["environ"] += 1
            except OSError:
                pass

    summary = demo.run(tmp_path / "demo", repo_password=CANARY, probe=probe)
    assert summary["ok"], summary
    assert summary["consistency"] == "application-consistent"
    assert summary["freeze_window_ms"] > 0
    assert scanned["environ"] >= 3
    files = 0
    for f in (tmp_path / "demo").rglob("*"):
        if f.is_file() and "restore" not in f.parts and "app" not in f.parts:
            files += 1
            if CANARY.encode() in f.read_bytes():
                hits.append(str(f))
    assert not hits, hits
    left = [p for p in _descendants([os.getpid()]) if p != os.getpid()]
    print(f"RESULT DEMO ok={summary['ok']} freeze_ms={summary['freeze_window_ms']:.1f} bytes={summary['bytes_total']}"
          f" seconds={summary['seconds']}")
    print(f"RESULT S5 canaries=1 hits={len(hits)} locations_scanned={scanned['cmdline'] + scanned['environ'] + files}")
    assert not left, f"processes left behind: {left}"
