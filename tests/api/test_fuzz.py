"""Schemathesis against the OpenAPI spec, in-process: zero 5xx, zero schema violations.

Every generated request carries the admin token (so the handlers are reached); the refusal of every
protected call without a token is tests/api/test_api.py::test_every_protected_route_refuses_without_token.
Cases per operation: FRIEZE_FUZZ_EXAMPLES (default 70: 30 operations → about 2100 cases).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api.support import api

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("FRIEZE_FUZZ_EXAMPLES", "70"))
#: A schema-valid request may still be refused by a semantic rule (an invalid cron expression, an unknown
#: time zone, a store that cannot be opened): those 400s are documented, so this one check is left out.
EXCLUDED = [positive_data_acceptance]


def test_fuzz_openapi(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    with api(tmp_path) as (_c, client, h):
        # some real objects so that references resolve on some paths
        client.post("/v1/hosts", json={"name": "h1"}, headers=h)
        schema = schemathesis.openapi.from_asgi("/v1/openapi.json", client.app)
        counts = {"cases": 0, "5xx": 0}

        failures = []
        for op in schema.get_all_operations():
            operation = op.ok()
            test = operation.as_strategy()
            @given(test)
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def one(case: schemathesis.Case) -> None:
                counts["cases"] += 1
                resp = case.call(headers=h)
                if resp.status_code >= 500:
                    counts["5xx"] += 1
                case.validate_response(resp, excluded_checks=EXCLUDED)

            try:
                one()
            except Exception as e:  # collect, report all at the end
                failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:400]}")
        print(f"RESULT API-FUZZ cases={counts['cases']} server_errors={counts['5xx']} failures={len(failures)}")
        assert not failures, "\n".join(failures)
        assert counts["5xx"] == 0
        assert counts["cases"] >= 20 * min(EXAMPLES, 50)
