"""The client's exceptions. Messages name the request and what went wrong, never a secret."""

from __future__ import annotations

import reprlib
from typing import Any

from nexudus_assets.nexudus.models import FieldError, valid_id


class NexudusError(Exception):
    """Base class of everything the client raises.

    Callers decide by two properties rather than by exception type: `retryable` (trying the
    same request later may succeed: nothing about it was wrong) and `may_have_been_applied`
    (a write the server may have carried out although no usable answer said so).
    """

    retryable: bool = False
    may_have_been_applied: bool = False

    def __init__(self, *args: object, may_have_been_applied: bool | None = None) -> None:
        super().__init__(*args)
        if may_have_been_applied is not None:
            self.may_have_been_applied = may_have_been_applied


class TransportError(NexudusError):
    """The request did not complete (connection refused, dropped, timed out) after retries."""

    retryable = True


class UncertainOutcomeError(TransportError):
    """A write may have reached the server but no usable answer came back, so it was not retried."""

    may_have_been_applied = True


class ResponseFormatError(NexudusError):
    """The server answered with something that is not the JSON the documentation promises."""


class APIError(NexudusError):
    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request: str = "",
        may_have_been_applied: bool | None = None,
    ) -> None:
        #: The server's reason alone, without the request and status around it.
        self.reason = message
        self.status_code = status_code
        self.request = request
        prefix = f"{request}: " if request else ""
        suffix = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"{prefix}{message}{suffix}", may_have_been_applied=may_have_been_applied)


class AuthenticationError(APIError):
    """Bad credentials, a missing role, or a refused token exchange."""


class SignInRefusedError(AuthenticationError):
    """The credentials themselves were refused. No client in this process sends them again."""


class PermissionDeniedError(AuthenticationError):
    """The sign-in stands, but this endpoint refused it (401/403): the user lacks `role` for it."""

    def __init__(self, message: str, *, role: str, status_code: int | None = None, request: str = "") -> None:
        self.role = role
        super().__init__(message, status_code=status_code, request=request)


class NotFoundError(APIError):
    pass


class ThrottledError(APIError):
    """Still throttled (409/429) when the time allowed for waiting (`throttle_patience`) ran out."""

    retryable = True


class ServerError(APIError):
    """5xx, or the generic error text Nexudus also sends as a 400, after retries.

    On a write it is raised at once, with `may_have_been_applied` set: it is never sent twice.
    """

    retryable = True


class RequestRefusedError(APIError):
    """The server refused the data: HTTP 400, or `WasSuccessful: false` on a 200."""

    def __init__(
        self,
        message: str,
        *,
        errors: list[FieldError] | None = None,
        status_code: int | None = None,
        request: str = "",
        answer: Any = None,
    ) -> None:
        self.errors = errors or []
        self.answer = answer
        details = "; ".join(f"{e.property_name}: {e.message}" for e in self.errors if e.property_name)
        full = f"{message} [{details}]" if details and details not in message else message
        super().__init__(full, status_code=status_code, request=request)


class StaleRecordError(NexudusError):
    """A safe update found the record changed since the caller read it."""


class RecordValidationError(NexudusError):
    """A record from the API does not fit its model. Names the record and the fields."""

    def __init__(self, entity: str, record_id: Any, problems: list[tuple[str, str]], *, raw: Any = None) -> None:
        self.entity = entity
        #: The record exactly as received, for quarantine.
        self.raw = raw
        #: The record's Id; None when it has none that is a valid Id (the one it has is in `raw`).
        self.record_id = valid_id(record_id)
        self.problems = problems
        if self.record_id is not None:
            who = f"{entity} {self.record_id}"
        elif record_id is None:
            who = f"{entity} without Id"
        else:
            # Shortened: a hostile Id can be any JSON value, of any size.
            who = f"{entity} with the unusable Id {reprlib.repr(record_id)}"
        what = "; ".join(f"field {field!r}: {message}" for field, message in problems)
        super().__init__(f"{who}: {what}")
