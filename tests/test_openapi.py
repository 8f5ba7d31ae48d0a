"""The OpenAPI document is valid 3.1, and the API, fuzzed against it (schemathesis), never answers with a
server error or a response outside the document."""

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")

from crossmodal.api.http import wsgi_app  # noqa: E402
from crossmodal.api.openapi import openapi_document  # noqa: E402

KEY = "fuzz-key"
# Each run draws new cases; CROSSMODAL_FUZZ_EXAMPLES raises the count for a deliberate hunt.
EXAMPLES = int(os.environ.get("CROSSMODAL_FUZZ_EXAMPLES", "25"))


def test_document_is_valid_openapi_3_1():
    from openapi_spec_validator import validate

    validate(openapi_document())


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_clip_dir):
    data = tmp_path_factory.mktemp("api-store")
    return wsgi_app({"api_key": KEY, "data_dir": str(data), "model": str(tiny_clip_dir)})


def test_api_fuzzed_against_its_schema(app):
    from hypothesis import HealthCheck, settings

    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers={"Authorization": f"Bearer {KEY}"})
    failures = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(headers={"Authorization": f"Bearer {KEY}"})
        if response.status_code >= 500:
            failures.append((case.method, case.path, case.body, response.text[:300]))
        case.validate_response(response, checks=[schemathesis.checks.not_a_server_error,
                                                 schemathesis.checks.status_code_conformance,
                                                 schemathesis.checks.response_schema_conformance])

    for operation in schema.get_all_operations():
        op = operation.ok()
        strategy = op.as_strategy()
        from hypothesis import given

        given(case=strategy)(run)()
    assert not failures, failures[:3]
