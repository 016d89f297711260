"""What stands between the network and the API's routes: an API key, a body size cap, and an HTTP protocol
that drops clients too slow to send a whole request (slowloris)."""

from __future__ import annotations

import hmac
import json

from starlette.responses import JSONResponse as StarletteJSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

OPEN_PATHS = ("/health",)


def error_body(
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the request body is larger than {limit} bytes (--max-body-mib)")


def key_matches(header: str | None, api_key: str) -> bool:
    """`Authorization: Bearer KEY`, compared in constant time."""
    given = (header or "").removeprefix("Bearer ").encode()
    return (
        header is not None
        and header.startswith("Bearer ")
        and hmac.compare_digest(given, api_key.encode())
    )


class Guard:
    """ASGI middleware: the API key on every route but /health (and /metrics when it is public), and the
    body cap (a declared length over it is refused before reading; an undeclared one is counted as it comes,
    and BodyTooLarge reaches the app's handler)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, public_metrics: bool):
        self.app, self.api_key, self.limit = app, api_key, max_body_bytes
        self.open_paths = OPEN_PATHS + (("/metrics",) if public_metrics else ())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
        }
        if self.api_key and scope["path"] not in self.open_paths:
            if not key_matches(headers.get("authorization"), self.api_key):
                return await _reply(
                    send,
                    401,
                    error_body(
                        "invalid or missing API key",
                        None,
                        "invalid_api_key",
                        "authentication_error",
                    ),
                )
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reply(
                    send, 400, error_body(f"Content-Length {declared!r} is not a byte count")
                )
            if int(declared) > self.limit:
                return await _reply(
                    send, 413, error_body(str(BodyTooLarge(self.limit)), None, "body_too_large")
                )
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class JSONResponse(StarletteJSONResponse):
    """JSON with every non-ASCII character escaped: an error that quotes the request back (a model name with
    a lone surrogate) must still encode; starlette's own writes UTF-8 and raises on a surrogate."""

    def render(self, content: object) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode()


async def _reply(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, but a connection must deliver a whole request (headers and body) within
    `header_timeout` seconds of opening, or of its previous response, or it is closed. uvicorn alone closes
    idle keep-alive connections but waits forever on a half-sent request."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def handle_events(self) -> None:
        super().handle_events()
        if self._receiving_done() and self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(
            self.timeout_keep_alive + self.header_timeout, self._too_slow
        )

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _receiving_done(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and not cycle.more_body

    def _too_slow(self) -> None:
        self._deadline = None
        if not self._receiving_done() and not self.transport.is_closing():
            self.transport.close()


def deadline_protocol(header_timeout: float) -> type[H11Protocol]:
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"header_timeout": header_timeout})
