"""Every error answer is ``{"error": message}``."""
from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every error answer is ``{"error": message}``, as the README documents: FastAPI's own
    404, 405 and validation errors would otherwise answer ``{"detail": ...}``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if message == HTTPStatus(exc.status_code).phrase:      # Starlette's bare default: say more
            path = request.url.path
            if exc.status_code == 404:
                message = f"not found: {path}"
            elif exc.status_code == 405:
                allowed = (exc.headers or {}).get("Allow")
                message = f"method {request.method} not allowed on {path}" + (f" (use {allowed})" if allowed else "")
        return error(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in problems)
        return error(422, message or "invalid request", details=jsonable_encoder(problems))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette still logs the traceback; the client gets JSON, not a text/plain page.
        return error(500, "internal server error")
