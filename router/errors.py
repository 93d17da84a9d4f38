"""The error tree: each error knows its HTTP status and OpenAI error envelope. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ECHO_CHARS = 256  # of a client's string quoted back in an error message
MESSAGE_CHARS = 1024  # of any error message


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters (marked with an ellipsis): what an error message may
    quote of a client's input, so a 1 MB model name does not come back whole."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class FlashproError(Exception):
    """Base of every error flashpro reports to a client."""

    status: int = 500
    type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        message = clip(message, MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.param = None if param is None else clip(param)
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(FlashproError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class Unauthorized(FlashproError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class ModelNotFound(FlashproError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class RequestNotFound(FlashproError):
    """No request with that id (made with the caller's key) is known."""

    status = 404
    type = "invalid_request_error"
    default_code = "request_not_found"


class PayloadTooLarge(FlashproError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(FlashproError):
    """flashpro's own limits (budgets, request rates) refused the request."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class BudgetExhausted(RateLimited):
    """A `reject` budget is spent until its period resets: `Retry-After` says when, and
    `x-should-retry: false` keeps the OpenAI SDKs from retrying a request bound to fail."""

    type = "insufficient_quota"
    default_code = "budget_exhausted"


class UpstreamRateLimited(FlashproError):
    status = 429
    type = "rate_limit_error"
    default_code = "upstream_rate_limited"


class ContextTooLong(FlashproError):
    status = 400
    type = "invalid_request_error"
    default_code = "context_length_exceeded"


class UpstreamRejected(FlashproError):
    """The upstream refused the request as invalid; the status mirrors the upstream's 4xx."""

    status = 400
    type = "invalid_request_error"
    default_code = "upstream_rejected"


class UpstreamAuthFailed(FlashproError):
    """The upstream refused flashpro's own key: a deployment problem, not the client's key, so
    it is not a 401 (a client would take that to mean its own key is wrong)."""

    status = 502
    type = "upstream_error"
    default_code = "upstream_auth_failed"


class UpstreamBalanceExhausted(FlashproError):
    """The upstream account behind a tier has no balance left (DeepSeek's 402): the operator's
    problem, never the client's request; a 503 so clients retry later rather than fix their
    request."""

    status = 503
    type = "upstream_error"
    default_code = "upstream_insufficient_balance"

    @classmethod
    def on(cls, tier: str, account: str) -> UpstreamBalanceExhausted:
        return cls(
            f"Tier '{tier}': the upstream refused the call for lack of balance (DeepSeek 402 "
            f"Insufficient Balance) on {account}. Top up that account; the request itself is "
            "fine."
        )


class UpstreamSaturated(FlashproError):
    """A tier's `max_concurrency` is reached and no slot freed in its queue time."""

    status = 503
    type = "server_error"
    default_code = "upstream_saturated"


class UpstreamTimeout(FlashproError):
    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"


class UpstreamQueued(UpstreamTimeout):
    """The upstream sent no answer by the first-byte deadline (it may be queueing the request:
    DeepSeek sends keep-alives meanwhile); another tier may answer sooner."""


class UpstreamError(FlashproError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class UpstreamOverloaded(UpstreamError):
    """DeepSeek's 503 Server Overloaded: retried, then relayed as a 503 with its Retry-After."""

    status = 503
    default_code = "upstream_overloaded"


class RouteNotFound(FlashproError):
    """No such endpoint."""

    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(FlashproError):
    """An endpoint asked with a method it does not take (`allow` lists those it does)."""

    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class ServiceUnavailable(FlashproError):
    status = 503
    type = "server_error"
    default_code = "service_unavailable"


class UpstreamBusy(ServiceUnavailable):
    """Every connection flashpro may open to the upstream is in use (its own limit)."""

    default_code = "upstream_busy"


def internal_error(request_id: str) -> FlashproError:
    """The generic 500: nothing about the cause leaks to the client."""
    message = f"Internal error; quote request id {request_id} when reporting it."
    return FlashproError(message, code="internal_error")


def internal_error_envelope(request_id: str) -> dict[str, Any]:
    """The generic 500 body in OpenAI's envelope."""
    return internal_error(request_id).envelope()
