"""Schemathesis against the OpenAPI spec, in-process: zero 5xx, zero schema violations, at least
FRIEZE_FUZZ_CASES (default 2000) generated cases.

Every generated request carries the admin token (so the handlers are reached); the refusal of every
protected call without a token is tests/api/test_api.py::test_every_protected_route_refuses_without_token.
Hypothesis stops early on operations with a small input space (no parameters: a handful of cases), so the
budget goes to the operations with a body, path or query parameters, in rounds, until the target is met.

The run happens in an empty working directory that must still be empty afterwards, and the coordinator
only accepts file repositories under the test's own directory (``repository_roots``): a generated
repository URL can create nothing in the source tree nor anywhere else on the machine.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api.support import api

pytestmark = pytest.mark.timeout(900)

TARGET = int(os.environ.get("FRIEZE_FUZZ_CASES", "2000"))
#: A schema-valid request may still be refused by a semantic rule (an invalid cron expression, an unknown
#: time zone, a store that cannot be opened): those 400s are documented, so this one check is left out.
EXCLUDED = [positive_data_acceptance]
#: cases for an operation without parameters (only its token varies: hypothesis exhausts it at once)
PLAIN = 5


def _has_params(operation: Any) -> bool:
    return bool(len(operation.body) or len(operation.path_parameters) or len(operation.query))


def test_fuzz_openapi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vol").mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    t0 = time.monotonic()
    with api(tmp_path, repository_roots=[tmp_path / "repos"]) as (_c, client, h):
        # some real objects so that references resolve on some paths
        client.post("/v1/hosts", json={"name": "h1"}, headers=h)
        schema = schemathesis.openapi.from_asgi("/v1/openapi.json", client.app)
        operations = [op.ok() for op in schema.get_all_operations()]
        param_ops = [o for o in operations if _has_params(o)]
        counts = {"cases": 0, "5xx": 0}
        per_op: dict[str, int] = {}
        failures: list[str] = []

        def run(operation: Any, examples: int) -> None:
            key = f"{operation.method.upper()} {operation.path}"

            @given(operation.as_strategy())
            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def one(case: schemathesis.Case) -> None:
                counts["cases"] += 1
                per_op[key] = per_op.get(key, 0) + 1
                resp = case.call(headers=h)
                if resp.status_code >= 500:
                    counts["5xx"] += 1
                case.validate_response(resp, excluded_checks=EXCLUDED)

            try:
                one()
            except Exception as e:  # collect, report all at the end
                failures.append(f"{key}: {str(e)[:400]}")

        for o in operations:
            if not _has_params(o):
                run(o, PLAIN)
        rounds = 0
        while counts["cases"] < TARGET and rounds < 6 and not failures:
            rounds += 1
            share = math.ceil((TARGET - counts["cases"]) * 1.05 / len(param_ops))
            for o in param_ops:
                run(o, max(share, 10))
        seconds = time.monotonic() - t0
        print(f"RESULT API-FUZZ cases={counts['cases']} operations={len(operations)} rounds={rounds} "
              f"server_errors={counts['5xx']} failures={len(failures)} min_per_param_op="
              f"{min(per_op.get(f'{o.method.upper()} {o.path}', 0) for o in param_ops)} seconds={seconds:.0f}")
        assert not failures, "\n".join(failures)
        assert counts["5xx"] == 0
        assert counts["cases"] >= TARGET
    assert list(cwd.iterdir()) == [], "the fuzz run created files in the working directory"
    assert not any(p.name not in ("state", "vol", "cwd", "repos") for p in tmp_path.iterdir())
