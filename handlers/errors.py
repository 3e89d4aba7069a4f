"""The errors a request can be answered with, one class per row of the README's error
table: each carries its HTTP status, and its type is its class name.

The body has the same shape as TorchServe's own errors:
{"code": 400, "type": "InvalidJSON", "message": "..."}
Messages never quote the user's text. A KServe v1 / OIP v2 request gets the same error
as {"error": "<type>: <message>"} (protocols.render)."""

from __future__ import annotations

from typing import Any, ClassVar


class RequestError(Exception):
    """A request the service refuses, answered with `status` and an error body."""

    status: ClassVar[int]
    kind: ClassVar[str]  # the body's "type": the class's name
    retry_after_s: ClassVar[int | None] = None  # the answer's Retry-After, when the client may come back

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = cls.__name__

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"code": self.status, "type": self.kind, "message": self.message}


class EmptyBody(RequestError):
    status = 400


class EmptyText(RequestError):
    status = 400


class InvalidJSON(RequestError):
    status = 400


class InvalidInput(RequestError):
    status = 400


class InvalidEncoding(RequestError):
    status = 400


class ExplanationsDisabled(RequestError):
    status = 404


class TooManyTexts(RequestError):
    status = 413


class TextTooLong(RequestError):
    status = 413


class TooManySteps(RequestError):
    status = 413


class TooManyTokens(RequestError):
    status = 413


class UnsupportedMediaType(RequestError):
    status = 415


class InternalServerError(RequestError):
    status = 500


class Overloaded(RequestError):
    """The request waited for a worker past the queue budget: not run."""

    status = 503
    retry_after_s = 1


ALL: tuple[type[RequestError], ...] = tuple(RequestError.__subclasses__())
