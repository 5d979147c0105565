"""`NexudusClient`: typed access to the Nexudus REST API over httpx.

Every request is paced to the published limits (one budget per account in the process),
throttling answers (409, 429) are waited out, transient failures are retried with
exponential backoff and jitter, and answers are checked before anything trusts them.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import from_json

from nexudus_assets.nexudus.auth import (
    REFUSED_SIGN_INS,
    Auth,
    AuthScheme,
    BasicAuth,
    BearerAuth,
    Credentials,
    required_role,
)
from nexudus_assets.nexudus.entities import Entity, entity_of
from nexudus_assets.nexudus.errors import (
    APIError,
    AuthenticationError,
    NexudusError,
    NotFoundError,
    PermissionDeniedError,
    RecordValidationError,
    RequestRefusedError,
    ResponseFormatError,
    ServerError,
    SignInRefusedError,
    StaleRecordError,
)
from nexudus_assets.nexudus.lease import AccountLease
from nexudus_assets.nexudus.models import (
    ActionResult,
    CommandDescription,
    FieldError,
    NexudusRecord,
    Page,
    UnstorableText,
    stored_version,
    valid_id,
)
from nexudus_assets.nexudus.pacing import Pacer, RateLimits, shared_pacer
from nexudus_assets.nexudus.paging import DEFAULT_MAX_PAGES, PageNumberPaginator, PagingSummary
from nexudus_assets.nexudus.retry import THROTTLING_STATUSES, Attempts, RetryableFailure, RetryPolicy

DEFAULT_BASE_URL = "https://spaces.nexudus.com/api"
MAX_PAGE_SIZE = 1000
#: Ids per by-Ids request: keeps the query string far below common URL limits.
IDS_PER_REQUEST = 100
#: Seconds one request may take from sending to its answer's last byte.
DEFAULT_REQUEST_DEADLINE = 60.0
#: Seconds a command or a PUT may take: live commands are slow (42 Ids took about 29 s), and a
#: write cut short by a timeout may still be applied, so it can only be recorded as uncertain.
DEFAULT_WRITE_DEADLINE = 120.0
#: Fields Nexudus sets itself. A PUT that carries them is refused or overwrites them, so they
#: are left out of the body (FACTS.md, "Seen in live accounts": writes).
SYSTEM_FIELDS = frozenset(
    {
        "CreatedOn",
        "UpdatedOn",
        "UpdatedBy",
        "UniqueId",
        "IsNew",
        "SystemId",
        "ToStringText",
        "LocalizationDetails",
        "CustomFields",
    }
)
#: The largest answer read. A full page of 1000 records is a few megabytes.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: Records sit three levels down a list answer (envelope, `Records`, record). This is the
#: nesting pydantic_core's parser stops at: far beyond any record's shape, and far short of
#: exhausting the stack.
MAX_JSON_DEPTH = 200
_TOO_DEEP = f"an answer nested more than {MAX_JSON_DEPTH} levels deep"

#: Requests that change something: they also count against the write limits.
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE"})
#: Failures that happen before a request leaves: retrying them can never apply it twice.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: The text of the generic failure Nexudus answers as a 500 and also as a 400: a passing fault
#: of the server, not a refusal of the data.
GENERIC_FAILURE_TEXT = "there was a problem while running this action"

log = logging.getLogger(__name__)


@dataclass
class RequestStats:
    requests: int = 0
    #: Throttling answers (409/429), and the seconds waited on them.
    throttled: int = 0
    throttle_wait_seconds: float = 0.0
    retries: int = 0
    #: Password grants this client sent to the token endpoint (refreshes not counted).
    password_grants: int = 0


@dataclass(frozen=True)
class WriteAnswer:
    """What a command or a PUT answered with a 2xx that did not say it failed."""

    #: True when the answer carries `WasSuccessful: true`; False when it says nothing usable
    #: (an empty body, 204, `{}`, `"OK"`, `true`, `null`, another spelling of the field).
    confirmed: bool
    message: str


def write_answer(described: str, answer: Any) -> WriteAnswer:
    """Read a write's 2xx answer. Only the documented `WasSuccessful` field, as a JSON boolean, says anything.

    `wasSuccessful` (camelCase) is not read as the field: the API documents `WasSuccessful`, and a
    server answering in another spelling may give it another meaning. Reading its `false` would
    re-send a command that may have been applied; ignoring its `true` costs nothing, since an
    unconfirmed answer rests the record for the cooldown just as a success does.
    An explicit `WasSuccessful: false` raises RequestRefusedError carrying the answer.
    """
    flag = answer.get("WasSuccessful") if isinstance(answer, dict) else None
    if not isinstance(flag, bool):
        shown = "an empty answer" if answer is None else f"an answer without WasSuccessful ({str(answer)[:80]!r})"
        return WriteAnswer(confirmed=False, message=f"{described}: {shown}; it may or may not have been applied")
    try:
        result = ActionResult.model_validate(answer)
    except PydanticValidationError:
        # The flag is there; the rest of the answer is only detail.
        result = ActionResult(was_successful=flag)
    if not result.was_successful:
        raise RequestRefusedError(
            result.message or "the server answered WasSuccessful: false",
            errors=result.errors,
            status_code=result.status,
            request=described,
            answer=result,
        )
    return WriteAnswer(confirmed=True, message=result.message or "done")


@dataclass
class RecordPage:
    """One page of a list, validated: good records and the ones that did not fit the model."""

    number: int
    records: list[NexudusRecord]
    rejected: list[RecordValidationError]
    #: An empty page that says the walk's first pass is over: every record it read came before,
    #: and the pages after it hold only records the passes that check the walk found missing.
    first_pass_over: bool = False
    #: Records left out because the caller holds them at the same `UpdatedOn` (`known_versions`).
    known: int = 0


def parse_record(entity: Entity, raw: Any) -> NexudusRecord:
    """Validate one raw record; the error names the record's Id and each offending field."""
    try:
        return entity.model.model_validate(raw)
    except PydanticValidationError as exc:
        record_id = raw.get("Id") if isinstance(raw, dict) else None
        problems = []
        for error in exc.errors():
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, UnstorableText):
                problems.extend(cause.problems)
            else:
                problems.append((".".join(str(part) for part in error["loc"]) or "<record>", error["msg"]))
        raise RecordValidationError(entity.name, record_id, problems, raw=raw) from None


def _validated(
    entity: Entity, number: int, raw_records: list[Any], known_versions: Mapping[int, dt.datetime] | None
) -> RecordPage:
    records, rejected, known = [], [], 0
    for raw in raw_records:
        if known_versions:
            version = stored_version(raw)
            if version is not None and known_versions.get(version[0]) == version[1]:
                known += 1
                continue
        try:
            records.append(parse_record(entity, raw))
        except RecordValidationError as exc:
            rejected.append(exc)
    return RecordPage(number=number, records=records, rejected=rejected, known=known)


def _raw_id(raw: Any) -> int | None:
    return valid_id(raw.get("Id")) if isinstance(raw, dict) else None


@functools.cache
def _verified_tls() -> ssl.SSLContext:
    """httpx's default certificate verification, its CA bundle loaded once per process, not per client.

    Loading the bundle takes tens of milliseconds, and every Dagster step makes a client.
    """
    return httpx.create_ssl_context()


def format_minute(value: dt.datetime) -> str:
    """The documented range-filter format, `YYYY-MM-DDTHH:mm`, in UTC when the value is aware."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ",".join(str(item) for item in value) + "]"
    return str(value)


class NexudusClient:
    """One client per account. Thread-safe; share it, or create many: they share one budget."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        username: str = "",
        password: str | SecretStr = "",
        *,
        auth: AuthScheme = "basic",
        totp: str | SecretStr | None = None,
        client_id: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        limits: RateLimits | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        request_deadline: float = DEFAULT_REQUEST_DEADLINE,
        write_deadline: float = DEFAULT_WRITE_DEADLINE,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_pages: int = DEFAULT_MAX_PAGES,
        pacer: Pacer | None = None,
        session: BearerAuth | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`timeout` bounds each network read; `request_deadline` a whole request, answer included.

        `write_deadline` replaces both for commands and PUTs, which are slow and must not be cut short.

        `session`: a bearer session to share with other clients (see `BearerAuth`); it replaces
        `auth`, the credentials and `client_id`, which made it.

        `max_pages` bounds one walk through a list whatever the server claims; a list that
        announces its `TotalItems` is held to those far sooner.
        """
        if not username:
            raise AuthenticationError("no Nexudus username: set NEXUDUS_USERNAME")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}")
        bounds = {
            "request_deadline": request_deadline,
            "write_deadline": write_deadline,
            "max_body_bytes": max_body_bytes,
            "max_pages": max_pages,
        }
        for name, value in bounds.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.page_size = page_size
        self.request_deadline = request_deadline
        self.write_deadline = write_deadline
        self.max_body_bytes = max_body_bytes
        self.max_pages = max_pages
        self.retry = retry or RetryPolicy()
        self.stats = RequestStats()
        self._sleep = sleep
        self._pacer = pacer or shared_pacer(self.base_url, username, limits or RateLimits())
        # A budget only holds if no other process spends it too; a server without limits needs no claim.
        paced = bool(self._pacer.limits.all_methods or self._pacer.limits.writes)
        self._lease = AccountLease(self.base_url, username) if paced else None
        # The deadline is checked between reads, so no single read may outwait it either.
        self._http = httpx.Client(
            timeout=min(timeout, request_deadline), headers={"Accept": "application/json"}, verify=_verified_tls()
        )
        credentials = Credentials(
            username=username,
            password=password if isinstance(password, SecretStr) else SecretStr(password),
            totp=SecretStr(totp) if isinstance(totp, str) and totp else (totp or None),
        )
        self._auth: Auth
        if session is not None:
            self._auth, credentials = session, session.credentials
        elif auth == "basic":
            self._auth = BasicAuth(credentials)
        elif auth == "bearer":
            self._auth = BearerAuth(credentials, client_id=client_id)
        else:
            raise ValueError(f"NEXUDUS_AUTH must be 'basic' or 'bearer', not {auth!r}")
        self._account = REFUSED_SIGN_INS.account(self.base_url, credentials)

    def __repr__(self) -> str:
        return f"NexudusClient(base_url={self.base_url!r}, username={self.username!r}, auth={self._auth!r})"

    def __enter__(self) -> NexudusClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        if self._lease is not None:
            self._lease.release()

    # -- reading -------------------------------------------------------------------------

    def list_page(
        self,
        entity: Entity,
        *,
        page: int = 1,
        size: int | None = None,
        orderby: str = "Id",
        dir: str | None = None,
        filters: Mapping[str, Any] | None = None,
        ranges: Mapping[str, tuple[Any, Any]] | None = None,
    ) -> Page:
        """One page of a list or search. `filters` and `ranges` are keyed by wire field name."""
        params: dict[str, str] = {"page": str(page), "size": str(size or self.page_size), "orderby": orderby}
        if dir is not None:
            params["dir"] = dir
        params.update(self._filter_params(entity, filters or {}, ranges or {}))
        answer = self._call("GET", entity.path, params=params)
        if isinstance(answer, list):
            # A server that answers without the envelope: a short list is the whole of it.
            answer = {"Records": answer, "HasNextPage": None if len(answer) >= int(params["size"]) else False}
        try:
            return Page.model_validate(answer)
        except PydanticValidationError as exc:
            raise ResponseFormatError(f"GET /{entity.path}: not a list envelope ({exc.errors()[0]['msg']})") from None

    def iter_pages(
        self,
        entity: Entity,
        *,
        filters: Mapping[str, Any] | None = None,
        ranges: Mapping[str, tuple[Any, Any]] | None = None,
        ids: Iterable[int] | None = None,
        page_size: int | None = None,
        summary: PagingSummary | None = None,
        known_versions: Mapping[int, dt.datetime] | None = None,
    ) -> Iterator[RecordPage]:
        """Every matching record, page by page, in Id order; bad records come back rejected.

        A record the server answers twice in a walk (a step back after drift re-reads a page)
        comes twice: the copy with the latest `UpdatedOn` is the one to keep. A walk of several
        pages is checked by walking it again, and an empty page marked `first_pass_over` comes
        between the two. `ids` looks records up by Id (in chunks, so any number of Ids fits the URL).
        `known_versions` maps Ids to the `UpdatedOn` of the versions the caller already holds: a
        record answered at that `UpdatedOn` is counted in its page's `known`, not validated again.
        """
        summary = summary or PagingSummary()
        if ids is None:
            yield from self._walk(entity, filters, ranges, page_size or self.page_size, summary, known_versions)
            return
        wanted = sorted(set(ids))
        for number, start in enumerate(range(0, len(wanted), IDS_PER_REQUEST), start=1):
            chunk = wanted[start : start + IDS_PER_REQUEST]
            try:
                page = self.list_page(entity, size=len(chunk), filters={**(filters or {}), "Id": chunk}, ranges=ranges)
            except NotFoundError:
                continue  # the reference answers 404 "Not found" when none of the Ids exists any more
            asked = set(chunk)
            found = [raw for raw in page.records if _raw_id(raw) in asked]
            if len(found) < len(page.records):
                log.warning(
                    "%s: a lookup of %d Ids answered %d records it was not asked for; they were ignored",
                    entity.name,
                    len(chunk),
                    len(page.records) - len(found),
                )
            summary.pages += 1
            summary.records += len(found)
            yield _validated(entity, number, found, known_versions)

    def iter_records(self, entity: Entity, **kwargs: Any) -> Iterator[NexudusRecord]:
        """Every matching record; raises on the first record that does not fit the model."""
        for page in self.iter_pages(entity, **kwargs):
            if page.rejected:
                raise page.rejected[0]
            yield from page.records

    def find_by_ids(self, entity: Entity, ids: Iterable[int]) -> list[NexudusRecord]:
        return list(self.iter_records(entity, ids=ids))

    def _walk(
        self,
        entity: Entity,
        filters: Mapping[str, Any] | None,
        ranges: Mapping[str, tuple[Any, Any]] | None,
        size: int,
        summary: PagingSummary,
        known_versions: Mapping[int, dt.datetime] | None,
    ) -> Iterator[RecordPage]:
        paginator = PageNumberPaginator(
            fetch=lambda number, size: self.list_page(entity, page=number, size=size, filters=filters, ranges=ranges),
            size=size,
            summary=summary,
            max_pages=self.max_pages,
            described=f"GET /{entity.path}",
        )
        number = 0
        for raw_records in paginator:
            if not raw_records:
                yield RecordPage(number=number, records=[], rejected=[], first_pass_over=True)
                continue
            number += 1
            yield _validated(entity, number, raw_records, known_versions)
        if summary.incomplete is not None:
            log.warning(
                "%s: %d records read although the server announced %s: %s",
                entity.name,
                summary.records,
                summary.total_items,
                summary.incomplete,
            )

    def get(self, entity: Entity, record_id: int) -> NexudusRecord:
        return parse_record(entity, self._get_raw(entity, record_id))

    def commands(self, entity: Entity) -> list[CommandDescription]:
        answer = self._call("GET", f"{entity.path}/commands")
        if isinstance(answer, dict) and isinstance(answer.get("Records"), list):
            answer = answer["Records"]
        if not isinstance(answer, list):
            raise ResponseFormatError(f"GET /{entity.path}/commands: expected a list of commands")
        return [CommandDescription.model_validate(item) for item in answer]

    # -- writing -------------------------------------------------------------------------

    def create(self, entity: Entity, data: Mapping[str, Any]) -> ActionResult:
        """POST a new record (wire names). Not retried once it may have reached the server."""
        return self._action("POST", entity.path, json=dict(data), replay_safe=False)

    def update(
        self,
        entity: Entity,
        record: int | NexudusRecord,
        changes: Mapping[str, Any],
        *,
        unchanged_since: dt.datetime | None = None,
    ) -> WriteAnswer:
        """Change some fields and keep the rest.

        A PUT clears every property missing from its body, so this reads the record, merges
        `changes` (wire names) into it, leaves out the system fields and PUTs the whole record.
        Pass the record you read earlier instead of its Id, or `unchanged_since` (its `UpdatedOn`
        as you saw it), to refuse the update with StaleRecordError when it changed in between.
        """
        unknown = sorted(set(changes) - set(entity.put_fields))
        if unknown:
            raise ValueError(f"{entity.name} has no updatable field(s) {', '.join(unknown)}")
        record_id = record if isinstance(record, int) else record.id
        current_raw = self._get_raw(entity, record_id)
        current = parse_record(entity, current_raw)
        seen = record.updated_on if isinstance(record, NexudusRecord) else unchanged_since
        # Both naive UTC, as the models and the warehouse keep every stamp.
        if (isinstance(record, NexudusRecord) or unchanged_since is not None) and seen != current.updated_on:
            raise StaleRecordError(
                f"{entity.name} {record_id} changed since it was read "
                f"(UpdatedOn {seen} then, {current.updated_on} now); read it again"
            )
        object_names = {legacy: wire for wire, legacy in entity.model.legacy_list_names().items()}
        as_object = ((object_names.get(key, key), value) for key, value in current_raw.items())
        body = {name: value for name, value in as_object if name not in SYSTEM_FIELDS}
        body.update(changes)
        body["Id"] = record_id
        answer = self._call("PUT", entity.path, json=body, replay_safe=True, deadline=self.write_deadline)
        return write_answer(f"PUT /{entity.path}", answer)

    def delete(self, entity: Entity, record_id: int) -> ActionResult:
        if not entity.deletable:
            raise NexudusError(f"the API documents no DELETE for {entity.name}")
        return self._action("DELETE", f"{entity.path}/{record_id}", replay_safe=True)

    def run_command(
        self,
        entity: Entity,
        key: str,
        ids: Sequence[int],
        parameters: Sequence[Mapping[str, Any]] = (),
    ) -> WriteAnswer:
        """POST `runcommand`, never re-sent once it may have arrived.

        HTTP 200 is no success: `WasSuccessful: false` raises RequestRefusedError carrying the
        answer, and an answer that does not say comes back unconfirmed (see `write_answer`).
        """
        body = {"Key": key, "Ids": list(ids), "Parameters": [dict(p) for p in parameters]}
        path = f"{entity.path}/runcommand"
        answer = self._call("POST", path, json=body, replay_safe=False, deadline=self.write_deadline)
        return write_answer(f"POST /{path}", answer)

    # -- plumbing ------------------------------------------------------------------------

    def _get_raw(self, entity: Entity, record_id: int) -> dict[str, Any]:
        answer = self._call("GET", f"{entity.path}/{int(record_id)}")
        if not isinstance(answer, dict):
            raise ResponseFormatError(f"GET /{entity.path}/{record_id}: expected a record object")
        return answer

    def _filter_params(
        self, entity: Entity, filters: Mapping[str, Any], ranges: Mapping[str, tuple[Any, Any]]
    ) -> dict[str, str]:
        params = {entity.filter_name(name): _query_value(value) for name, value in filters.items()}
        for name, (low, high) in ranges.items():
            low_name, high_name = entity.range_names(name)
            for param, bound in ((low_name, low), (high_name, high)):
                if bound is not None:
                    params[param] = format_minute(bound) if isinstance(bound, dt.datetime) else str(bound)
        return params

    def _action(self, method: str, path: str, *, replay_safe: bool, json: Any = None) -> ActionResult:
        answer = self._call(method, path, json=json, replay_safe=replay_safe)
        try:
            result = ActionResult.model_validate(answer if isinstance(answer, dict) else {})
        except PydanticValidationError as exc:
            raise ResponseFormatError(
                f"{method} /{path}: unexpected answer ({exc.errors()[0]['msg']})", may_have_been_applied=True
            ) from None
        if not result.was_successful:
            raise RequestRefusedError(
                result.message or "the server answered WasSuccessful: false",
                errors=result.errors,
                status_code=result.status,
                request=f"{method} /{path}",
                answer=result,
            )
        return result

    def _post_token(self, form: Mapping[str, str], headers: Mapping[str, str]) -> tuple[int, Any]:
        if form.get("grant_type") == "password":
            self.stats.password_grants += 1
        answer = self._send("POST", f"{self.base_url}/token", data=form, headers=headers, replay_safe=True)
        return answer.status, answer.body

    def _auth_headers(self) -> dict[str, str]:
        return self._auth.headers(self._post_token)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        replay_safe: bool | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Send an authenticated request and return its JSON; error answers become exceptions.

        `deadline`: seconds this request may take instead of `request_deadline`.

        Credentials refused once are not sent again by any client of this process. A 401 or
        403 that is not a refused sign-in (see `SignInRefusals`) fails this request alone,
        naming the role the endpoint needs.
        """
        safe = method in {"GET", "PUT", "DELETE"} if replay_safe is None else replay_safe
        REFUSED_SIGN_INS.raise_if_refused(self._account)
        reauthenticated = False
        described = f"{method} /{path}"
        try:
            while True:
                answer = self._send(
                    method,
                    f"{self.base_url}/{path}",
                    params=params,
                    json=json,
                    replay_safe=safe,
                    auth_headers=self._auth_headers,
                    deadline=deadline,
                    writes=method in WRITE_METHODS,
                )
                if answer.status == 401 and not reauthenticated and self._auth.invalidate():
                    reauthenticated = True
                    continue
                if answer.status in (401, 403):
                    raise self._refusal(answer, method, path)
                REFUSED_SIGN_INS.accepted(self._account)
                if 200 <= answer.status < 300:
                    return answer.body
                if answer.status == 404 and method == "DELETE" and answer.retried:
                    # An earlier attempt got no answer: it deleted the record.
                    return {"WasSuccessful": True, "Message": "The record was deleted (first answer lost)."}
                raise _error_for(answer, described, writes=method in WRITE_METHODS)
        except SignInRefusedError as refused:
            REFUSED_SIGN_INS.remember(self._account, refused)
            raise

    def _refusal(self, answer: _Answer, method: str, path: str) -> AuthenticationError:
        """A 401/403: a missing role for this endpoint, or (Basic, refused everywhere) wrong credentials."""
        described = f"{method} /{path}"
        message = _message(answer.content) or answer.response.reason_phrase or "refused"
        entity = entity_of(path)
        basic = isinstance(self._auth, BasicAuth)
        if basic and REFUSED_SIGN_INS.denied_everywhere(self._account, entity.path if entity else None):
            return SignInRefusedError(
                f"{message}: every endpoint refused the credentials (check NEXUDUS_USERNAME/NEXUDUS_PASSWORD)",
                status_code=answer.status,
                request=described,
            )
        role = required_role(method, path) or "a role for this endpoint"
        what = f"{entity.name} records ({entity.table.replace('_', ' ')})" if entity else "this endpoint"
        hint = "; if every endpoint refuses, check NEXUDUS_USERNAME/NEXUDUS_PASSWORD" if basic else ""
        return PermissionDeniedError(
            f"{message}: the Nexudus user may not access {what}; it needs the role {role}{hint}",
            role=role,
            status_code=answer.status,
            request=described,
        )

    def _send(
        self,
        method: str,
        url: str,
        *,
        replay_safe: bool,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth_headers: Callable[[], dict[str, str]] | None = None,
        deadline: float | None = None,
        writes: bool = False,
    ) -> _Answer:
        """Send until an answer worth returning comes: throttling waited out, failures retried where safe.

        `writes`: the request changes account data, so its errors say whether it may have been applied.
        """
        attempts = Attempts(self.retry, f"{method} {httpx.URL(url).path}", replay_safe, writes=writes)
        while True:
            try:
                response, content = self._attempt(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    headers=headers,
                    auth_headers=auth_headers,
                    deadline=deadline,
                )
                if response.status_code in THROTTLING_STATUSES:
                    self.stats.throttled += 1
                    wait = attempts.throttling_wait(response, content)
                    self.stats.throttle_wait_seconds += wait
                    # The pacer holds every client of the account, this one included, for the wait.
                    self._pacer.throttled(wait)
                    continue
                return _accepted(response, content, attempts)
            except httpx.TransportError as exc:
                problem = str(exc) if isinstance(exc, _DeadlinePassed) else type(exc).__name__
                failure = attempts.unanswered(problem, never_sent=isinstance(exc, NEVER_SENT))
            except _UnusableAnswer as exc:
                raise ResponseFormatError(f"{attempts.described}: {exc}", may_have_been_applied=writes) from None
            except RetryableFailure as retryable:
                failure = retryable
            self.stats.retries += 1
            self._sleep(attempts.backoff_wait(failure))

    def _attempt(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        json: Any,
        data: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        auth_headers: Callable[[], dict[str, str]] | None,
        deadline: float | None,
    ) -> tuple[httpx.Response, bytes]:
        """Send once, with the account claimed, signed in and paced."""
        if self._lease is not None:
            self._lease.acquire()
        request_headers = dict(headers or {})
        if auth_headers is not None:
            # Before the slot: signing in is a request of its own, paced the same way.
            request_headers.update(auth_headers())
        with self._pacer.slot(write=method in WRITE_METHODS):
            return self._receive(
                method,
                url,
                deadline,
                params=params,
                json=json,
                data=data,
                headers=request_headers,
            )

    def _receive(self, method: str, url: str, deadline: float | None, **request: Any) -> tuple[httpx.Response, bytes]:
        """Send once and read the whole answer, within the request deadline and the size limit.

        httpx bounds each read, not their sum: an answer trickling a byte at a time would
        otherwise hold the request open for ever. The deadline is checked as each piece arrives.
        `deadline` (a write's) replaces the request deadline, and the read timeout with it.
        """
        allowed = deadline or self.request_deadline
        ends = time.monotonic() + allowed
        # No single read may outwait the deadline either.
        timeout = (
            self._http.timeout if deadline is None else httpx.Timeout(deadline, connect=self._http.timeout.connect)
        )
        with self._http.stream(method, url, timeout=timeout, **request) as response:
            self.stats.requests += 1
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise _UnusableAnswer(
                    f"an answer of {int(declared)} bytes, more than the {self.max_body_bytes} allowed (max_body_bytes)"
                )
            content = bytearray()
            for piece in response.iter_bytes():
                if time.monotonic() > ends:
                    raise _DeadlinePassed(
                        f"no complete answer within the {allowed:g}s request deadline",
                        request=response.request,
                    )
                content += piece
                if len(content) > self.max_body_bytes:
                    raise _UnusableAnswer(
                        f"an answer larger than the {self.max_body_bytes} bytes allowed (max_body_bytes)"
                    )
        return response, bytes(content)


class _DeadlinePassed(httpx.TimeoutException):
    """The answer was still arriving when the request deadline passed."""


class _UnusableAnswer(Exception):
    """An answer no retry is expected to mend: too large, or nested beyond any record's shape."""


@dataclass
class _Answer:
    status: int
    body: Any
    response: httpx.Response
    content: bytes
    #: Earlier attempts failed without an answer; the server may have seen one of them.
    retried: bool


def _accepted(response: httpx.Response, content: bytes, attempts: Attempts) -> _Answer:
    """The answer an attempt got, to return; RetryableFailure when another attempt may get a better one.

    A 5xx or a garbled body from a request that may have been applied is raised, never retried.
    """
    status = response.status_code
    retried = attempts.failures > 0
    if status >= 500 or (status == 400 and _is_generic_failure(content)):
        if not attempts.replay_safe:
            raise ServerError(
                f"{_message(content) or 'server error'}; it may have been applied, so it was not retried",
                status_code=status,
                request=attempts.described,
                may_have_been_applied=True,
            )
        raise RetryableFailure(ServerError, f"HTTP {status}")
    if status >= 300:
        return _Answer(status, _json_or_none(content), response, content, retried)
    try:
        return _Answer(status, _parse_json(response, content), response, content, retried)
    except _UnusableAnswer as exc:
        raise ResponseFormatError(f"{attempts.described}: {exc}", may_have_been_applied=attempts.writes) from None
    except ResponseFormatError as exc:
        if not attempts.replay_safe:
            raise ResponseFormatError(f"{attempts.described}: {exc}", may_have_been_applied=attempts.writes) from None
        raise RetryableFailure(ResponseFormatError, str(exc)) from None


def _load_json(body: bytes) -> Any:
    """Parsed JSON; ValueError when malformed, `_UnusableAnswer` when nested too deep."""
    try:
        # Its own depth limit is MAX_JSON_DEPTH, so deep nesting costs no walk of the result.
        return from_json(body, cache_strings="keys")
    except ValueError as exc:
        if str(exc).startswith("recursion limit exceeded"):
            raise _UnusableAnswer(_TOO_DEEP) from None
    # The standard parser also reads what the fast one refuses although JSON allows it, such as
    # a byte-order mark, UTF-16 or an escaped lone surrogate; a malformed body fails here too.
    # Invalid UTF-8 bytes are kept as lone surrogates (`surrogateescape`): they belong to one
    # record's string, which is quarantined naming its field, not to the whole page.
    try:
        try:
            value = json.loads(body)
        except UnicodeDecodeError:
            value = json.loads(body.decode("utf-8", "surrogateescape"))
    except RecursionError:
        raise _UnusableAnswer(_TOO_DEEP) from None
    if _nested_deeper_than(value, MAX_JSON_DEPTH):
        raise _UnusableAnswer(_TOO_DEEP)
    return value


def _nested_deeper_than(value: Any, limit: int) -> bool:
    # Iterative: a recursive walk would fail on the very nesting it is looking for. Levels are
    # counted as the fast parser counts them: an empty array or object adds none.
    pending = [(value, 1)] if isinstance(value, dict | list) and value else []
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list) and child)
    return False


def _parse_json(response: httpx.Response, body: bytes) -> Any:
    """The body's JSON; a body that is not JSON raises, saying what came instead."""
    content_type = response.headers.get("Content-Type", "")
    if not body.strip():
        return None
    if "html" in content_type or body.lstrip()[:1] == b"<":
        raise ResponseFormatError(
            f"an answer that is not JSON but {content_type or 'HTML'} (HTTP {response.status_code}): "
            f"{body[:80].decode('utf-8', 'replace')!r}"
        )
    try:
        return _load_json(body)
    except ValueError as exc:
        raise ResponseFormatError(
            f"an answer that is malformed JSON (HTTP {response.status_code}, {len(body)} bytes): {exc}"
        ) from None


def _json_or_none(body: bytes) -> Any:
    try:
        return _load_json(body)
    except (ValueError, _UnusableAnswer):
        return None


def _message(body: bytes) -> str | None:
    answer = _json_or_none(body)
    if isinstance(answer, dict):
        return answer.get("Message") or answer.get("message")
    if isinstance(answer, str):
        return answer
    return None


def _is_generic_failure(content: bytes) -> bool:
    message = _message(content)
    return isinstance(message, str) and GENERIC_FAILURE_TEXT in message.lower()


def _error_for(answer: _Answer, described: str, *, writes: bool) -> APIError:
    """The error an answer of 300 or more (other than throttling, 401 and 403) stands for.

    A 4xx refused the request; a write answered 3xx (a redirect, not followed) may have been applied.
    """
    status = answer.status
    message = _message(answer.content) or answer.response.reason_phrase or "error"
    if status == 404:
        return NotFoundError(message, status_code=status, request=described)
    if status == 400:
        body = answer.body
        errors = None
        if isinstance(body, dict) and isinstance(body.get("Errors"), list):
            errors = [FieldError.model_validate(item) for item in body["Errors"] if isinstance(item, dict)]
        return RequestRefusedError(message, errors=errors, status_code=status, request=described, answer=body)
    return APIError(message, status_code=status, request=described, may_have_been_applied=writes and status < 400)


__all__ = [
    "DEFAULT_BASE_URL",
    "NexudusClient",
    "RecordPage",
    "RequestStats",
    "WriteAnswer",
    "format_minute",
    "parse_record",
]
