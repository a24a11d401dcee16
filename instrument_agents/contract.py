"""The agent's error contract: one error body for every refusal, and a schema that says so.

Why one module: a generated client, or a fuzzer, knows the agent only through its OpenAPI
schema. When the schema promised FastAPI's validation list for 422 while the agent answered
``{"error", "detail"}``, and left 401/403/409 out, every refusal was misread. Here every answer
that is not 2xx, whoever raises it (a route, the lease, the driver, request validation, the
router's 404/405, a body too large, a bug), is one :class:`ApiErrorBody`, and each route lists
the statuses it can return with a model whose ``error`` is one of that status's codes (so a
schema check also proves each code comes with its status).

Request validation answers 422 ``invalid_request`` in the same shape, with pydantic's list kept
as ``fields`` (``loc``, ``msg``, ``type``; never the input, which may be huge or not JSON).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coorch.instrument_agents.guards import ApiError
from coorch.instrument_agents.protocol import Aborted, DriverError

LOG = logging.getLogger(__name__)

#: Every error code the agent answers, by HTTP status (docs/drivers.md, "Errors").
CODES: dict[int, tuple[str, ...]] = {
    400: ("bad_request",),
    401: ("unauthorized",),
    403: ("forbidden", "lease_required", "lease_expired", "lease_invalid"),
    404: ("not_found",),
    405: ("method_not_allowed",),
    409: ("lease_conflict", "aborted"),
    413: ("too_large",),
    422: (
        "invalid_request",
        "out_of_limits",
        "unknown_modality",
        "request_id_reused",
        "bad_fiducials",
    ),
    500: ("fault", "internal"),
    501: ("not_supported",),
    503: ("transient", "in_progress"),
}

WHAT: dict[int, str] = {
    400: "the body could not be read as JSON text (not UTF-8, nested too deep)",
    401: "no bearer token, or not one this agent knows",
    403: "the read-only token on a control route (`forbidden`), or no live lease for this id: "
    "`lease_required` (no X-Lease-Id), `lease_expired`, `lease_invalid` (take the lease again)",
    409: "another controller holds the lease (`lease_conflict`: wait), or the operation was "
    "stopped by an abort (`aborted`)",
    413: "the body is larger than the agent reads (`too_large`)",
    422: "the request is not valid: `invalid_request` (the schema; see `fields`), "
    "`out_of_limits` (nothing moved), `unknown_modality`, `request_id_reused` (the id was "
    "measured with another modality), `bad_fiducials`",
    500: "the instrument reports a fault a retry will not clear (`fault`: reset it), or the "
    "agent failed (`internal`, see its log)",
    501: "the driver lacks this capability (`not_supported`)",
    503: "a transient fault or a retried request still running (`transient`, `in_progress`): "
    "retry, with the same request id",
}


class FieldError(BaseModel):
    """One field pydantic refused (FastAPI's validation entry, without the input)."""

    loc: list[str | int]
    msg: str
    type: str


class ApiErrorBody(BaseModel):
    """Every answer that is not 2xx."""

    error: str = Field(description="machine-readable code; the client maps it to an exception")
    detail: str = Field(description="one sentence for people")
    transient: bool = Field(False, description="whether retrying the same request may help")
    fields: list[FieldError] | None = Field(None, description="invalid_request only: what failed")


def _status_model(status: int) -> type[ApiErrorBody]:
    code = Literal[CODES[status]]  # type: ignore[valid-type]
    return create_model(f"Error{status}", __base__=ApiErrorBody, error=(code, ...))


MODELS: dict[int, type[ApiErrorBody]] = {s: _status_model(s) for s in CODES}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer these error statuses."""
    return {s: {"model": MODELS[s], "description": WHAT[s]} for s in statuses}


def error_response(
    status: int,
    error: str,
    detail: str,
    *,
    transient: bool | None = None,
    fields: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "error": error,
        "detail": detail,
        "transient": status == 503 if transient is None else transient,
    }
    if fields is not None:
        body["fields"] = fields
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------- handlers


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail)


async def _driver_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DriverError)
    if isinstance(exc, Aborted):
        status, code = 409, "aborted"
    elif exc.transient:
        status, code = 503, "transient"
    else:
        status, code = 500, "fault"
    return error_response(status, code, str(exc), transient=exc.transient)


def _field(e: dict[str, Any]) -> dict[str, Any]:
    loc = [p if isinstance(p, int) else str(p) for p in e.get("loc", ())]
    return {"loc": loc, "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [_field(e) for e in exc.errors()]
    text = "; ".join(f"{'.'.join(map(str, f['loc']))}: {f['msg']}" for f in fields[:5])
    more = f" (and {len(fields) - 5} more)" if len(fields) > 5 else ""
    return error_response(422, "invalid_request", f"{text}{more}", fields=fields)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "bad_request")
    headers = exc.headers
    if exc.status_code == 405:  # Starlette names only the first route of the path
        headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


def _allowed(request: Request) -> list[str]:
    """Every method some route of this path answers (``/v1/lease`` has POST and DELETE)."""
    path = request.url.path
    return sorted(
        {
            method
            for route in request.app.router.routes
            if isinstance(route, Route) and route.path_regex.match(path)
            for method in route.methods or ()
        }
    )


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after answering, so the traceback still reaches the agent's log.
    return error_response(500, "internal", "internal agent error; see the agent's log")


def install_handlers(app: FastAPI) -> None:
    """Make every refusal an :class:`ApiErrorBody`, whoever raises it."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DriverError, _driver_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)


# ---------------------------------------------------------------------- body size


class BodyTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI re-raises an HTTPException met while reading a body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class BodyLimit:
    """Refuse (413) a request body over ``max_bytes`` while it is read, declared or chunked.

    Checked lazily, in ``receive``: a route that reads no body never answers 413, so the
    statuses each route documents stay exact.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"0")
        limit, seen = self.max_bytes, 0

        async def limited() -> Message:
            nonlocal seen
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


# ---------------------------------------------------------------------- the schema


def install_openapi(
    app: FastAPI, *, modalities: Sequence[str], move_example: dict[str, Any] | None
) -> None:
    """Serve a schema with only the agent's own error bodies, and this instrument's facts.

    FastAPI lists a route's security schemes as alternatives; a control call needs the token
    *and* the lease id, so they become one requirement. FastAPI adds its validation list as a
    422 to every route with a parameter; the routes with a body declare their own 422, so what
    remains is dropped (a header cannot fail validation here). ``modality`` is an enum of this
    instrument's modalities, and ``move_example`` (the stage centre) gives a fuzzer and a
    reader one move that lands inside the limits.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    if len(op.get("security", [])) > 1:  # FastAPI lists them as alternatives
                        op["security"] = [{k: v for req in op["security"] for k, v in req.items()}]
                    got = op.get("responses", {}).get("422", {})
                    ref = str(got.get("content", {}).get("application/json", {}).get("schema"))
                    if "HTTPValidationError" in ref:
                        del op["responses"]["422"]
            comps = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                comps.pop(name, None)
            if "MeasureBody" in comps:
                comps["MeasureBody"]["properties"]["modality"]["enum"] = list(modalities)
            if "MoveBody" in comps and move_example is not None:
                comps["MoveBody"]["examples"] = [move_example]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
