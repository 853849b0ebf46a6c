"""Schemathesis against the agent's OpenAPI, in-process (the routes behind the role check): no request and no
task may end in an ``internal`` error (a bug), and every error answer is an error body. The mTLS and role
checks themselves are tests/agent/test_mtls.py. Cases per operation: FRIEZE_FUZZ_EXAMPLES (default 15)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from frieze.agent.app import AgentState, create_app
from frieze.agent.config import load
from frieze.agent.host import HostService
from frieze.agent.tasks import TaskTable
from tests.agent.conftest import make_db
from tests.agent.support import write_config

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("FRIEZE_FUZZ_EXAMPLES", "15"))


def test_fuzz_agent_api(tmp_path: Path) -> None:
    vol = tmp_path / "data" / "vol"
    make_db(vol)
    (tmp_path / "restore").mkdir()
    top = {"name": "h1", "state_dir": str(tmp_path / "st"), "restore_roots": [str(tmp_path / "restore")]}
    cfg = load(write_config(tmp_path / "agent.toml", top,
                            {"db1": {"kind": "sqlite", "data_dir": str(vol), "volume": "v1",
                                     "options": {"database": "app.db"}}},
                            {"v1": {"path": str(vol), "provider": "copy"}}))
    host = HostService(cfg)
    tasks = TaskTable()
    app = create_app(AgentState(host, tasks, None), require_role=None)
    counts = {"cases": 0, "internal": 0, "bodyless": 0}
    failures: list[str] = []
    try:
        schema = schemathesis.openapi.from_asgi("/v1/openapi.json", app)
        for op in schema.get_all_operations():
            operation = op.ok()

            @given(operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def one(case: schemathesis.Case) -> None:
                counts["cases"] += 1
                resp = case.call()
                if resp.status_code >= 400:
                    try:
                        code = resp.json()["error"]["code"]
                    except Exception:
                        counts["bodyless"] += 1
                        raise AssertionError(f"{case.method} {case.path}: {resp.status_code} without an error "
                                             "body") from None
                    if code == "internal":
                        counts["internal"] += 1
                        raise AssertionError(f"{case.method} {case.formatted_path}: internal error")

            try:
                one()
            except Exception as e:
                failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:300]}")
        # every task the fuzzing started finishes without an internal error
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with tasks._lock:
                pending = [t for t in tasks._tasks.values() if not t.finished]
                internal = [t for t in tasks._tasks.values() if t.error is not None and t.error.code == "internal"]
            if not pending:
                break
            time.sleep(0.1)
        assert not pending, "tasks still running after the fuzzing"
        failures += [f"task {t.action} {t.target}: {t.error.message if t.error else ''}" for t in internal]
    finally:
        tasks.shutdown()
        host.close()
        from frieze.host.providers.copy import CopyProvider

        prov = CopyProvider()
        for ref in prov.list(str(vol)):
            prov.delete(ref)
    print(f"RESULT AGENT-FUZZ cases={counts['cases']} internal={counts['internal']} failures={len(failures)}")
    assert not failures, "\n".join(failures)
    assert counts["cases"] >= 10 * min(EXAMPLES, 10)
