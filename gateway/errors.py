"""The gateway's HTTP errors, in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import math

import orjson
from pydantic import ValidationError

# OpenAI's `type` values, by HTTP status, so clients that branch on them keep working.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


class ApiError(Exception):
    """An error answered to the client with `status` and an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s

    @property
    def type(self) -> str:
        """OpenAI's error type for this status."""
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> bytes:
        """The JSON body."""
        detail = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": detail})

    def headers(self) -> dict[str, str]:
        """Extra headers: `Retry-After` (whole seconds, at least 1) on 429/503."""
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after_s)))}


def from_validation_error(error: ValidationError, what: str = "request body") -> ApiError:
    """A 400 naming the first bad field, or saying the body is not JSON."""
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the {what} is not valid JSON: {first['msg']}", code="invalid_json")
    location = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    # Union members each add their own location suffix (e.g. `stop.str`); the param is the field.
    param = location or None
    text = f"{location}: {message}" if location else message
    if first["type"] == "missing":
        text = f"{location} is required"
    more = error.error_count() - 1
    if more:
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ApiError(400, f"invalid {what}: {text}", code=first["type"], param=param)
