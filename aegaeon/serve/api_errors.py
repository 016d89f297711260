"""The API's errors: an HTTP status and OpenAI's error body `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from aegaeon.serve.api_guard import error_body


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.param, self.code, self.kind)


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, None, "service_unavailable", "service_unavailable_error")
