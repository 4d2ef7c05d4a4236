"""Errors as RFC 9457 `application/problem+json`, each with a stable machine-readable `code`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """Raise anywhere in a route; becomes a problem+json response and changes nothing."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"https://bourse.dev/errors/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }


def problem(
    status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = problem_body(status, code, detail, **extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def schema_errors(errors: Sequence[Any], *, skip: int = 0) -> list[dict[str, str]]:
    """pydantic's errors as `{field, message}`; `skip` drops leading location parts ("body")."""
    return [
        {"field": ".".join(str(part) for part in error["loc"][skip:]) or "body", "message": error["msg"]}
        for error in errors
    ]


INVALID_REQUEST = "the request does not match the schema"


def internal_error_body() -> dict[str, Any]:
    """The answer to a request whose handling failed unexpectedly, on either HTTP path (nothing
    of the failure in it: the server logs that)."""
    return problem_body(500, "internal_error", "the request could not be handled")


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return problem(exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extra)

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem(422, "invalid_request", INVALID_REQUEST, errors=schema_errors(exc.errors(), skip=1))

    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return problem(exc.status_code, code, str(exc.detail))

    async def on_unexpected_error(_request: Request, _exc: Exception) -> JSONResponse:
        # Starlette sends this, then raises the exception again for the server to log.
        return JSONResponse(internal_error_body(), status_code=500, media_type=PROBLEM_JSON)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
