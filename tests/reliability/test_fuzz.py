"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis), in process.

Requests valid by the schema and requests that break it (negative mode), as JSON, form and
multipart bodies, go to every operation; no answer may be a 5xx and every answer must match the
schema (status declared, content type, body shape, headers). Two of schemathesis' checks are left
out. `positive_data_acceptance`: the schema cannot state what depends on the server (the loaded
language pair, the caps in settings), so a schema-valid request may rightly get 400, 413 or 422;
those refusals are tested one by one in tests/reliability/test_hostile_input.py.
`negative_data_rejection`: the body is validated in pydantic's lax mode, which forms need (every
field arrives as a string) and JSON shares, so what lax mode coerces is accepted (`"beam_size": "3"`,
`"length_penalty": false`) although the schema says otherwise.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from service.main import create_app
from tests.service.conftest import tiny_settings

TRANSLATE_EXAMPLES = {GenerationMode.POSITIVE: 600, GenerationMode.NEGATIVE: 450}
OTHER_EXAMPLES = 25  # the GET routes take no parameters: a handful of distinct requests each
MINIMUM = 1000


@pytest.fixture(scope="module")
def schema(tiny_bundle, translator):
    app = create_app(tiny_settings(tiny_bundle, rate_limit_chars_per_minute=0), translator)  # no 429 by volume
    with TestClient(app):  # runs the lifespan: the app's parts exist while the schema is used
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_a_thousand_generated_requests_get_no_5xx_and_answers_that_match_the_schema(schema):
    seen: Counter = Counter()

    def fuzz(operation, mode: GenerationMode, examples: int) -> None:
        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=examples,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case) -> None:
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance, negative_data_rejection])
            seen[(operation.path, mode.value, response.status_code)] += 1

        check()

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/translate":
            for mode, examples in TRANSLATE_EXAMPLES.items():
                fuzz(operation, mode, examples)
        else:
            fuzz(operation, GenerationMode.POSITIVE, OTHER_EXAMPLES)

    total = sum(seen.values())
    statuses = Counter(status for (_, _, status) in seen.elements())
    assert total >= MINIMUM, f"only {total} requests were generated"
    assert not [s for s in statuses if s >= 500], statuses
    assert {p for (p, _, _) in seen} >= {"/translate", "/languages", "/models", "/health/live", "/health/ready"}
    assert statuses[200] > 100 and statuses[422] > 100, statuses  # both sides of validation were reached
    print(f"{total} requests: {dict(sorted(statuses.items()))}")
