"""Property-based fuzzing of the OpenAPI schema (schemathesis): no input makes the API answer 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from rlhf_loop.bus.broker import EmbeddedBroker
from tests.conftest import REDIS_URL
from tests.support.api import Api, start_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fuzz_api(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str, broker: EmbeddedBroker, demo_model_dir: Path
) -> Iterator[Api]:
    server = start_api(
        tmp_path_factory.mktemp("fuzz"),
        module_pg_url,
        broker.bootstrap_servers,
        demo_model_dir,
        REDIS_URL,
        api__rate_limit="1000000",
    )
    yield server
    server.process.stop()


def test_no_input_causes_a_server_error(fuzz_api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/generate",
        "/v1/feedback",
        "/v1/feedback/batch",
        "/v1/feedback/choice",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:  # noqa: ANN001
            for headers in (fuzz_api.headers, {}):  # with and without a valid app key
                response = case.call(headers=headers)
                assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"

        call()
