"""Conformance of every registered app plug-in to the port (frieze.host.apps.base), each against its real engine:
PostgreSQL 15, MariaDB 10.11, SQLite (pysqlite3), Redis 7, an ext4 loop mount (files), and a real writer process
stopped/continued by user hooks (script)."""

from __future__ import annotations

import dataclasses
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.host.apps.envs import ENVS, KINDS, Env

from frieze.core.errors import Conflict, LeaseExpired, NotFound, NotSupported, StaleEpoch, UsageError
from frieze.host.apps import registry
from frieze.host.apps.base import AppPlugin, AppSpec, RecoveryTarget


@pytest.fixture(scope="module", params=KINDS)
def engine(request: pytest.FixtureRequest) -> Iterator[Env]:
    """One real engine per kind for the whole module (starting them is the slow part)."""
    with ENVS[request.param]() as e:
        yield e


@pytest.fixture
def env(engine: Env) -> Env:
    """The module's engine with a fresh plug-in instance (no quiesce state carried between tests)."""
    return dataclasses.replace(engine, plugin=registry.load(engine.plugin.kind))


# --------------------------------------------------------------------------------------------- registration


def test_every_declared_plugin_loads_and_implements_the_port() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["frieze.apps"]
    assert set(declared) == set(KINDS)
    assert registry.declared() == declared  # entry points (or the built-in fallback) match pyproject
    for kind in KINDS:
        p = registry.load(kind)
        assert isinstance(p, AppPlugin)
        assert p.kind == kind and p.capabilities.kind == kind
    with pytest.raises(NotFound):
        registry.load("oracle")


# --------------------------------------------------------------------------------------------- per plug-in


def test_unsupported_calls_raise_not_supported(env: Env) -> None:
    p, caps = env.plugin, env.plugin.capabilities
    calls: list[tuple[str, bool, Callable[[], Any]]] = [
        ("start", caps.start_stop, lambda: p.start(env.spec)),
        ("stop", caps.start_stop, lambda: p.stop(env.spec)),
        ("recover", caps.recover_to_time, lambda: p.recover(env.spec, RecoveryTarget(time="2026-01-01T00:00:00Z"))),
        ("recover", caps.recover_to_named_point, lambda: p.recover(env.spec, RecoveryTarget(name="x"))),
        ("recover", caps.recover_all_logs, lambda: p.recover(env.spec, RecoveryTarget())),
        ("verify", caps.verify, lambda: p.verify(env.spec)),
    ]
    n = 0
    for name, supported, call in calls:
        if supported:
            continue
        with pytest.raises(NotSupported) as ei:
            call()
        assert p.kind in str(ei.value) and name in str(ei.value)
        n += 1
    print(f"RESULT CONF-UNSUPPORTED kind={p.kind} not_supported_calls={n}")


def test_lease_zero_or_negative_refused_and_nothing_changes(env: Env) -> None:
    for lease in (0, -1, 0.0, float("nan"), float("inf")):
        with pytest.raises(UsageError):
            env.plugin.quiesce(env.spec, epoch=1, lease_s=lease)
    with pytest.raises(UsageError):
        env.plugin.quiesce(env.spec, epoch=-1, lease_s=5)
    assert env.plugin.status(env.spec)["quiesced"] is False
    assert env.probe(10), "a write must go through: the refused quiesce must change nothing"


def test_unknown_data_dir_is_not_found(env: Env) -> None:
    bad = AppSpec(env.spec.name, env.spec.kind, "/nonexistent/frieze-nowhere", dict(env.spec.options),
                  dict(env.spec.secrets))
    with pytest.raises(NotFound):
        env.plugin.quiesce(bad, epoch=1, lease_s=5)
    with pytest.raises(NotFound):
        env.plugin.status(bad)
    assert env.probe(10)


def test_quiesce_idempotent_blocks_writes_and_unquiesce_resumes(env: Env) -> None:
    p, spec = env.plugin, env.spec
    assert env.probe(10)
    t0 = time.monotonic()
    h = p.quiesce(spec, epoch=7, lease_s=30)
    assert h.epoch == 7 and h.lease_s == 30 and h.app == spec.name
    try:
        assert p.quiesce(spec, epoch=7, lease_s=30) is h  # same epoch: the existing handle
        with pytest.raises(Conflict):
            p.quiesce(spec, epoch=8, lease_s=30)
        assert p.status(spec)["quiesced"] is True
        if env.blocks_writes:
            assert not env.probe(0.7), "a write completed while the app was quiesced"
        else:
            assert env.frozen is not None and env.frozen()
        with pytest.raises(StaleEpoch):
            p.unquiesce(spec, epoch=6)
    finally:
        res = p.unquiesce(spec, epoch=7)
    window = time.monotonic() - t0
    assert res.changed
    assert env.probe(10), "writes did not resume after unquiesce"
    again = p.unquiesce(spec, epoch=7)
    assert not again.changed
    assert p.status(spec)["quiesced"] is False
    print(f"RESULT CONF-QUIESCE kind={p.kind} quiesce_ms={h.info.get('quiesce_ms')} window_ms={window * 1000:.0f}")


def test_lease_expiry_releases_without_unquiesce(env: Env) -> None:
    p, spec = env.plugin, env.spec
    lease = 2.0
    t0 = time.monotonic()
    p.quiesce(spec, epoch=3, lease_s=lease)
    if env.blocks_writes:
        assert not env.probe(0.3)
        assert env.probe(lease + 5), "writes did not resume after the lease ran out"
    else:
        time.sleep(lease + 1.0)
        assert env.frozen is not None and not env.frozen()
    released_after = time.monotonic() - t0
    res = p.unquiesce(spec, epoch=3)
    assert not res.changed and res.info.get("lease_expired") is True
    with pytest.raises(LeaseExpired):
        p.quiesce(spec, epoch=3, lease_s=lease)
    h = p.quiesce(spec, epoch=4, lease_s=30)  # a new epoch works again
    assert p.unquiesce(spec, epoch=h.epoch).changed
    print(f"RESULT CONF-LEASE kind={p.kind} lease_s={lease} released_after_s={released_after:.2f}")
    assert released_after <= lease + 2.5


def test_engine_itself_ends_the_freeze_when_our_watchdog_is_gone(env: Env) -> None:
    """As if the agent died: the in-process watchdog never fires; the engine's own timeout must end it."""
    if not env.server_side_lease:
        pytest.skip(f"{env.plugin.kind}: only the freeze guardian / the OS (on process death) ends this freeze")
    p, spec = env.plugin, env.spec
    lease = 2.0
    t0 = time.monotonic()
    p.quiesce(spec, epoch=11, lease_s=lease)
    held = p._held[spec.name]  # type: ignore[attr-defined]
    held.timer.cancel()
    if env.blocks_writes:
        assert env.probe(lease + 4), "the engine did not end the freeze by itself"
    else:
        deadline = time.monotonic() + lease + 4
        while env.frozen is not None and env.frozen() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert env.frozen is not None and not env.frozen()
    over = time.monotonic() - t0 - lease
    print(f"RESULT CONF-SERVER-LEASE kind={p.kind} lease_s={lease} over_lease_s={over:.2f}")
    assert over <= 2.5
    res = p.unquiesce(spec, epoch=11)
    assert not res.changed and res.info.get("lease_expired") is True


def test_start_stop_idempotent(env: Env) -> None:
    p, spec = env.plugin, env.spec
    if not p.capabilities.start_stop:
        pytest.skip(f"{p.kind} has no start/stop")
    assert not p.start(spec).changed  # already running
    assert p.stop(spec).changed
    assert p.status(spec)["running"] is False
    assert not p.stop(spec).changed
    assert p.start(spec).changed
    assert p.status(spec)["running"] is True
    assert env.probe(10)


def test_verify_on_live_engine(env: Env) -> None:
    p, spec = env.plugin, env.spec
    if not p.capabilities.verify or p.kind == "script":
        pytest.skip(f"{p.kind}: no engine check")
    if p.kind == "redis":
        h = p.quiesce(spec, epoch=1, lease_s=10)  # the persistence point writes the RDB file
        p.unquiesce(spec, epoch=h.epoch)
    res = p.verify(spec)
    assert res.info["ok"] is True and not res.changed
