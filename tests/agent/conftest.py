"""Fixtures of the agent tests: one PKI and one real agent process (sqlite app on a copy-provider volume) per
module; every test leaves the app unquiesced and deletes the snapshots it made (copy images are immutable)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.support import PKI, Agent, make_pki, run_agent


def make_db(vol: Path, rows: int = 10) -> Path:
    vol.mkdir(parents=True, exist_ok=True)
    db = vol / "app.db"
    c = sqlite3.connect(db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, v TEXT)")
    c.executemany("INSERT INTO t (v) VALUES (?)", [(f"row{i}",) for i in range(rows)])
    c.commit()
    c.close()
    return db


def standard_host(tmp: Path) -> dict[str, Any]:
    vol = tmp / "data" / "vol"
    make_db(vol)
    (tmp / "restore").mkdir(exist_ok=True)
    return {
        "apps": {"db1": {"kind": "sqlite", "data_dir": str(vol), "volume": "v1", "options": {"database": "app.db"}}},
        "volumes": {"v1": {"path": str(vol), "provider": "copy"},
                    "gone": {"path": str(tmp / "data" / "does-not-exist"), "provider": "copy"},
                    "onbtrfs": {"path": str(vol), "provider": "btrfs"}},
    }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[Agent]:
    tmp = tmp_path_factory.mktemp("agent")
    host = standard_host(tmp)
    with run_agent(tmp, pki, **host) as a:
        yield a
        cleanup_snapshots(a)


def cleanup_snapshots(a: Agent, volume: str = "v1") -> None:
    """Delete every snapshot of ``volume`` (copy images carry the immutable flag; tmp cleanup needs this)."""
    import tomllib

    from frieze.host.providers.copy import CopyProvider

    cfg = tomllib.loads(a.config.read_text())
    path = cfg["volumes"][volume]["path"]
    prov = CopyProvider()
    with contextlib.suppress(Exception):
        for ref in prov.list(path):
            prov.delete(ref)
