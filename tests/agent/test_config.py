"""The host configuration and the start checks: unknown keys and bad values are refused naming the key; an
agent that is not enrolled, or whose certificate names another host, does not start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from frieze.agent.config import load
from frieze.agent.daemon import tls_paths
from frieze.core.errors import NotFound, UsageError
from tests.agent.support import PKI, REPO, install_agent_cert, write_config


def test_config_loads_and_resolves_paths(tmp_path: Path) -> None:
    p = write_config(tmp_path / "a.toml", {"name": "h1", "state_dir": "st", "restore_roots": ["r"]},
                     {"db": {"kind": "sqlite", "data_dir": "d", "volume": "v"}},
                     {"v": {"path": "d", "provider": "copy"}})
    cfg = load(p)
    assert cfg.state_dir == str(tmp_path / "st") and cfg.restore_roots == [str(tmp_path / "r")]
    assert cfg.apps["db"].data_dir == str(tmp_path / "d") and cfg.volumes["v"].path == str(tmp_path / "d")
    assert cfg.host_port == ("127.0.0.1", 8702)


@pytest.mark.parametrize(("text", "needle"), [
    ('name = "h1"\nstate_dir = "s"\nrestore_root = ["x"]\n', "restore_root"),
    ('name = "h1"\nstate_dir = "s"\n[apps.db]\nkind = "sqlite"\ndata_dir = "d"\nvolum = "v"\n', "volum"),
    ('name = "h1"\nstate_dir = "s"\n[apps.db]\nkind = "sqlite"\ndata_dir = "d"\nvolume = "v"\n', "'v'"),
    ('name = "bad name"\nstate_dir = "s"\n', "name"),
    ('name = "h1"\n', "state_dir"),
    ('name = "h1"\nstate_dir = "s"\nheartbeat_s = -1\n', "heartbeat_s"),
    ('name = "h1\nstate_dir', "not valid TOML"),
])
def test_bad_config_refused(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "a.toml"
    p.write_text(text)
    with pytest.raises(UsageError) as ei:
        load(p)
    assert needle in ei.value.message and str(p) in ei.value.message


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load(tmp_path / "nope.toml")


def test_not_enrolled_or_wrong_host(tmp_path: Path, pki: PKI) -> None:
    p = write_config(tmp_path / "a.toml", {"name": "h2", "state_dir": str(tmp_path / "st")})
    with pytest.raises(UsageError, match="not enrolled"):
        tls_paths(load(p))
    install_agent_cert(pki, tmp_path / "st")  # a certificate for h1
    with pytest.raises(UsageError, match="names host 'h1'"):
        tls_paths(load(p))
    r = subprocess.run([sys.executable, "-m", "frieze.agent", "run", "--config", str(p)], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode == UsageError.exit_code and "names host 'h1'" in r.stderr
