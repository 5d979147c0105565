"""The Nexudus API client and its models. No Dagster here: usable from any Python code."""

from nexudus_assets.nexudus.client import DEFAULT_BASE_URL, NexudusClient, RecordPage, RequestStats, parse_record
from nexudus_assets.nexudus.entities import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, ENTITIES, Entity
from nexudus_assets.nexudus.errors import (
    APIError,
    AuthenticationError,
    NexudusError,
    NotFoundError,
    RecordValidationError,
    RequestRefusedError,
    ResponseFormatError,
    ServerError,
    SignInRefusedError,
    StaleRecordError,
    ThrottledError,
    TransportError,
    UncertainOutcomeError,
)
from nexudus_assets.nexudus.models import (
    AccessToken,
    ActionResult,
    CancellationReason,
    CommandDescription,
    CommandParameter,
    CoworkerContract,
    CoworkerTimePass,
    NexudusRecord,
    Page,
)
from nexudus_assets.nexudus.pacing import Pacer, RateLimits, Window
from nexudus_assets.nexudus.paging import PagingSummary
from nexudus_assets.nexudus.retry import RetryPolicy

__all__ = [
    "ACCESS_TOKENS",
    "COWORKER_CONTRACTS",
    "COWORKER_TIME_PASSES",
    "DEFAULT_BASE_URL",
    "ENTITIES",
    "APIError",
    "AccessToken",
    "ActionResult",
    "AuthenticationError",
    "CancellationReason",
    "CommandDescription",
    "CommandParameter",
    "CoworkerContract",
    "CoworkerTimePass",
    "Entity",
    "NexudusClient",
    "NexudusError",
    "NexudusRecord",
    "NotFoundError",
    "Pacer",
    "Page",
    "PagingSummary",
    "RateLimits",
    "RecordPage",
    "RecordValidationError",
    "RequestRefusedError",
    "RequestStats",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "SignInRefusedError",
    "StaleRecordError",
    "ThrottledError",
    "TransportError",
    "UncertainOutcomeError",
    "Window",
    "parse_record",
]
