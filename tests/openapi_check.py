"""Check the responses of documented endpoints against ``webhook_service/openapi.json``.

``OpenAPIClient`` is the Flask test client of the whole suite (tests/conftest.py installs
it): every response it receives from an operation the document describes (a documented
path and method) is validated with openapi-core, status, headers and body. Requests to
paths or methods the document does not describe (a 404, a 405) are not checked here.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from flask.testing import FlaskClient
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from werkzeug.test import TestResponse

from webhook_service.web.ops import openapi_document


class _SentRequest(WerkzeugOpenAPIRequest):
    """The request as the test client sent it; its body was read by the app, and only
    the operation (path, method) matters to response validation."""

    @property
    def body(self) -> bytes | None:
        return None


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(openapi_document())
    return loaded


@cache
def openapi() -> OpenAPI:
    return OpenAPI.from_dict(document())


def check_response(response: TestResponse) -> None:
    """Raise if ``response`` (to a documented operation) does not match the document."""
    if response.request.path not in document()["paths"]:
        return  # e.g. a 404 for another path (the document has no templated paths)
    request = _SentRequest(response.request)
    try:
        openapi().validate_response(request, WerkzeugOpenAPIResponse(response))
    except (PathNotFound, OperationNotFound):
        return
    except Exception as exc:
        raise AssertionError(
            f"{response.request.method} {response.request.path} answered {response.status} "
            f"{response.get_data(as_text=True)[:500]!r}, which does not match the OpenAPI "
            f"document: {exc!r} {getattr(exc, '__cause__', None)!r}"
        ) from exc


class OpenAPIClient(FlaskClient):
    """A Flask test client that checks every documented response against the document."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        check_response(response)
        return response
