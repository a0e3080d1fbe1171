"""The OpenAPI document: served, valid OpenAPI 3.1, complete, and enforced on the suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from tests.openapi_check import OpenAPIClient, document

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "webhook_service" / "openapi.json"
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def test_openapi_json_serves_the_packaged_document(client: FlaskClient) -> None:
    """GET /openapi.json answers the document in the package, a valid OpenAPI 3.1."""
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    served = response.json
    assert served == json.loads(DOCUMENT.read_text("utf-8"))
    assert served["openapi"].startswith("3.1.")
    validate(served)  # raises on an invalid document


def test_document_describes_exactly_the_routes_the_app_serves(app: Flask) -> None:
    """Every route (and method) of the app is documented, and nothing else is."""
    served = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in (rule.methods or set()) - IGNORED_METHODS
    }
    documented = {
        (path, method.upper())
        for path, operations in document()["paths"].items()
        for method in operations
    }
    assert served == documented


def test_every_error_code_of_the_document_is_a_code_the_service_answers() -> None:
    """The error codes named in the document's responses are documented in docs/http-api.md."""
    codes: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            error = node.get("properties", {}).get("error", {})
            if isinstance(error, dict):
                codes.update(error.get("enum", []))
                if "const" in error:
                    codes.add(error["const"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document())
    reference = (ROOT / "docs" / "http-api.md").read_text("utf-8")
    assert len(codes) >= 15
    assert {code for code in codes if f"`{code}`" not in reference} == set()


# --------------------------------------------------------------------------- the suite's hook


@pytest.fixture
def impostor() -> FlaskClient:
    """A client of a small app that answers documented paths wrongly."""
    fake = Flask("impostor")
    fake.test_client_class = OpenAPIClient

    @fake.get("/api/v1/usage")
    def usage() -> Response:
        response = fake.json.response({"tenant_id": 1, "plan": "pro"})
        response.headers["X-Request-ID"] = "r1"
        return response

    @fake.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}  # no X-Request-ID

    @fake.post("/api/v1/usage/scans")
    def scans() -> Response:
        response = fake.json.response({"error": "TEAPOT", "message": "no", "status": 418})
        response.status_code = 418
        response.headers["X-Request-ID"] = "r2"
        return response

    @fake.get("/not-documented")
    def other() -> str:
        return "anything"

    return fake.test_client()


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/usage"), ("GET", "/healthz"), ("POST", "/api/v1/usage/scans")],
)
def test_test_client_fails_a_response_the_document_does_not_allow(
    impostor: FlaskClient, method: str, path: str
) -> None:
    """A wrong body, a missing header or an undocumented status fails the test that got it."""
    with pytest.raises(AssertionError, match="does not match the OpenAPI document"):
        impostor.open(path, method=method)


def test_test_client_leaves_undocumented_paths_alone(impostor: FlaskClient) -> None:
    assert impostor.get("/not-documented").status_code == 200
    assert impostor.delete("/api/v1/usage").status_code == 405
