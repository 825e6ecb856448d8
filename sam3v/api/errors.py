"""Every error answers ``{"error": {"code": ..., "message": ...}}`` (plus ``field`` for bad input)."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_body(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


class JSONTooLarge:
    """Starlette's request body limit (``max_body_size`` on a route) answers 413 in plain text;
    clients of this API parse ``{"error": ...}``, so the answer is rewritten."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        replaced = False

        async def send_json(message):
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413 and \
                    dict(message.get("headers", [])).get(b"content-type", b"").startswith(b"text/plain"):
                replaced = True
                body = json.dumps(error_body("too_large", "request body too large for this route "
                                                          "(uploads: SAM3V_API_UPLOAD_MAX_BYTES)")).encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif not replaced:
                await send(message)

        await self.app(scope, receive, send_json)


def _problem(error: dict) -> dict:
    """One validation problem as ``{"field", "message"}``."""
    if error.get("type") == "json_invalid":
        # FastAPI puts the decoder's character offset where a field name goes: the field is the body.
        where = error.get("loc", ("body", "?"))[-1]
        reason = error.get("ctx", {}).get("error", "invalid")
        return {"field": "body", "message": f"not valid JSON: {reason} at character {where}"}
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return {"field": ".".join(loc) or "body", "message": error.get("msg", "invalid")}


def install(app: FastAPI) -> None:
    app.add_middleware(JSONTooLarge)
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, err: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(error_body(err.code, err.message, **err.extra), err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError):
        problems = [_problem(e) for e in err.errors()]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return JSONResponse(error_body("invalid_request", message, field=first["field"], details=problems), 422)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(err.status_code, "http_error")
        return JSONResponse(error_body(code, str(err.detail)), err.status_code)
