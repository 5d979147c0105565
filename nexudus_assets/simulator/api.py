"""From an HTTP request to its answer: faults, sign-in, limits, routing, admin endpoints.

Kept apart from `server.py` so that the request pipeline reads top to bottom without any
socket handling in the way.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import parse_qsl

from nexudus_assets.nexudus.entities import ENTITIES, Entity, entity_of
from nexudus_assets.simulator.commands import CommandQuirks
from nexudus_assets.simulator.core import Simulator
from nexudus_assets.simulator.faults import Faults
from nexudus_assets.simulator.sign_in import TokenError

log = logging.getLogger(__name__)

JSON = "application/json; charset=utf-8"
WRITES = frozenset({"POST", "PUT", "DELETE"})
THROTTLED_TEXT = b"You must wait before accessing this url again."
DENIED = {"Message": "Authorization has been denied for this request."}
FORBIDDEN = {"Message": "You do not have permission to access this resource."}
SERVER_ERROR = {"Message": "An error has occurred."}
#: The generic failure live accounts answer in bursts, as a 500 and sometimes as a 400.
GENERIC_FAILURE = {"Message": "Ooops! There was a problem while running this action. Please try again later."}
MAINTENANCE_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Down for maintenance</title></head>"
    b"<body><h1>We'll be back shortly</h1><p>Nexudus is undergoing scheduled maintenance.</p></body></html>\n"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    #: Close the connection without answering.
    drop: bool = False
    #: Above 0: send the body one byte every this many seconds.
    trickle_seconds: float = 0.0


def json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode())


def throttled(sim: Simulator, retry_after: int, status: int | None = None) -> Reply:
    status = status or sim.dialect.throttle_status
    if sim.faults.throttle_wait_in_body:
        text = THROTTLED_TEXT + f" Wait {retry_after} seconds".encode()
        return Reply(status, text, "text/plain; charset=utf-8")
    return Reply(status, THROTTLED_TEXT, "text/plain; charset=utf-8", {"Retry-After": str(retry_after)})


def handle(sim: Simulator, request: Request) -> Reply:
    if request.path.startswith("/_simulator/"):
        return _admin(sim, request)
    try:
        sim.catch_up()
        reply = _api(sim, request)
    except Exception:
        log.exception("simulator failed on %s %s", request.method, request.path)
        reply = json_reply(500, SERVER_ERROR)
    sim.record_request(request.method, request.path, request.query, 0 if reply.drop else reply.status)
    return reply


def _api(sim: Simulator, request: Request) -> Reply:
    reply = _answer(sim, request)
    faulty = not _is_token(request) or sim.faults.include_token_endpoint
    if faulty and reply.status == 200 and sim.faults.trickle_body_seconds > 0:
        reply.trickle_seconds = sim.faults.trickle_body_seconds
    return reply


def _is_token(request: Request) -> bool:
    return request.path.lower().rstrip("/") == "/api/token"


def _answer(sim: Simulator, request: Request) -> Reply:
    is_token = _is_token(request)
    malformed = False
    if not is_token or sim.faults.include_token_endpoint:
        # Before the rate limiter counts the request: see `Faults.latency_ms`.
        fault = _fault(sim)
        if isinstance(fault, Reply):
            return fault
        malformed = fault
    if is_token:
        reply = _token(sim, request)
    else:
        user = sim.accounts.authenticate(request.headers.get("Authorization"))
        if user is None or _denied(sim, request):
            return json_reply(401, DENIED)
        if _forbidden(sim, request):
            return json_reply(403, FORBIDDEN)
        wait = sim.limiter.admit(user, request.method in WRITES) if sim.enforce_limits else None
        reply = throttled(sim, wait) if wait is not None else _route(sim, request, user)
    if malformed:
        return Reply(200, reply.body[: len(reply.body) // 2], JSON)
    return reply


def _denied(sim: Simulator, request: Request) -> bool:
    """Whether the signed-in user lacks the roles of the entity `request` is for."""
    if not sim.faults.denied_entities:
        return False
    entity = entity_of(request.path[len("/api/") :])
    return entity is not None and entity.name in sim.faults.denied_entities


def _forbidden(sim: Simulator, request: Request) -> bool:
    """Whether `Faults.forbidden_endpoints` refuses this request: its entity, or its entity's commands."""
    if not sim.faults.forbidden_endpoints:
        return False
    rest = request.path[len("/api/") :].lower().strip("/")
    entity = entity_of(rest)
    if entity is None:
        return False
    tail = rest[len(entity.path) :].strip("/")
    is_command = tail in ("commands", "runcommand", "runacommand")
    return entity.name in sim.faults.forbidden_endpoints or (
        is_command and f"{entity.name}/commands" in sim.faults.forbidden_endpoints
    )


def _fault(sim: Simulator) -> Reply | bool:
    """A fault answer, or whether the real answer is to be cut short."""
    faults = sim.faults
    delay = faults.delay_seconds()
    if delay:
        time.sleep(delay)
    if faults.in_throttle_stretch():
        return throttled(sim, max(0, faults.retry_after), faults.throttle_stretch_status)
    if faults.take_error_burst():
        return json_reply(faults.error_burst_status, GENERIC_FAILURE)
    if faults.roll(faults.drop_rate):
        return Reply(0, drop=True)
    if faults.roll(faults.error_rate):
        return json_reply(500, SERVER_ERROR)
    if faults.roll(faults.throttle_rate):
        return throttled(sim, max(0, faults.retry_after))
    if faults.roll(faults.html_rate):
        return Reply(200, MAINTENANCE_PAGE, "text/html; charset=utf-8")
    return faults.roll(faults.malformed_rate)


def _token(sim: Simulator, request: Request) -> Reply:
    if request.method != "POST":
        return _not_allowed(request.method)
    if sim.enforce_limits:
        # The simulator has one account, and a refresh request names no user: count them all to it.
        wait = sim.limiter.admit(sim.accounts.username, write=True)
        if wait is not None:
            return throttled(sim, wait)
    text = request.body.decode("utf-8", "replace")
    if "json" in request.headers.get("Content-Type", "").lower() or text.lstrip().startswith("{"):
        return json_reply(400, {"error": "unsupported_grant_type"})
    form = dict(parse_qsl(text, keep_blank_values=True))
    client_id = request.headers.get("client_id") or form.get("client_id")
    grant_type = form.get("grant_type")
    try:
        if grant_type == "password":
            return json_reply(200, sim.accounts.sign_in(form, client_id))
        if grant_type == "refresh_token":
            return json_reply(200, sim.accounts.refresh(form, client_id))
    except TokenError as refused:
        return json_reply(400, refused.answer)
    return json_reply(400, {"error": "unsupported_grant_type"})


def _route(sim: Simulator, request: Request, user: str) -> Reply:
    rest = request.path.lower()[len("/api/") :].strip("/")
    method = request.method
    for entity in ENTITIES:
        if rest == entity.path:
            if method == "GET":
                return _list(sim, entity, request.query)
            if method == "POST":
                return json_reply(*sim.create(entity, request.json(), user))
            if method == "PUT":
                return json_reply(*sim.replace(entity, request.json(), user))
            return _not_allowed(method)
        if not rest.startswith(entity.path + "/"):
            continue
        tail = rest[len(entity.path) + 1 :]
        if tail == "commands":
            return json_reply(200, sim.command_catalogue(entity)) if method == "GET" else _not_allowed(method)
        # The reference shows both spellings, and GET as well as POST.
        if tail in ("runcommand", "runacommand"):
            if method in ("POST", "GET"):
                return _command_reply(sim.command_quirks.answer, sim.run_command(entity, request.json(), user))
            return _not_allowed(method)
        if tail.isdigit():
            if method == "GET":
                return json_reply(*sim.read(entity, int(tail)))
            if method == "DELETE" and entity.deletable:
                return json_reply(*sim.remove(entity, int(tail)))
            return _not_allowed(method)
        break
    return _no_route(request)


def _command_reply(style: str, answer: dict[str, Any]) -> Reply:
    """A command's answer as the documentation shows it, or in one of the styles live commands answer in."""
    if style == "no_content":
        return Reply(204)
    if style == "empty":
        return Reply(200)
    odd: dict[str, Any] = {
        "null": None,
        "empty_object": {},
        "ok_text": "OK",
        "true": True,
        "camel_case": {"wasSuccessful": answer["WasSuccessful"], "message": answer["Message"]},
    }
    return json_reply(200, odd.get(style, answer))


def _list(sim: Simulator, entity: Entity, query: dict[str, str]) -> Reply:
    (status, envelope), page = sim.list_page(entity, query)
    hook = sim.on_list_page
    if hook is not None:
        # Before the answer goes out: the client cannot ask for the next page until the
        # hook's changes are in, so drift lands exactly between two pages.
        hook(entity, page)
    depth = sim.faults.nesting_depth
    records = envelope.get("Records") if isinstance(envelope, dict) else None
    if depth > 0 and records:
        return _deeply_nested(status, envelope, depth)
    return json_reply(status, envelope)


def _deeply_nested(status: int, envelope: dict[str, Any], depth: int) -> Reply:
    """The envelope with a field nested `depth` arrays deep in its first record.

    Spliced into the text: building it as Python values would exhaust `json.dumps` first.
    """
    marker = "nesting-placeholder"
    first = {**envelope["Records"][0], "Nested": marker}
    text = json.dumps({**envelope, "Records": [first, *envelope["Records"][1:]]}, separators=(",", ":"))
    field = '"Nested":'
    nested = field + "[" * depth + "]" * depth
    return Reply(status, text.replace(field + json.dumps(marker), nested, 1).encode())


def _not_allowed(method: str) -> Reply:
    return json_reply(405, {"Message": f"The requested resource does not support http method '{method}'."})


def _no_route(request: Request) -> Reply:
    return json_reply(404, {"Message": f"No HTTP resource was found that matches the request URI '{request.path}'."})


def _admin(sim: Simulator, request: Request) -> Reply:
    """Test controls for a simulator running in another process. No auth, not counted."""
    action = request.path[len("/_simulator/") :].strip("/")
    body = request.json()
    if action == "health" and request.method == "GET":
        return json_reply(200, {"status": "ok", "records": {e.name: len(sim.table(e)) for e in ENTITIES}})
    if action == "stats" and request.method == "GET":
        return json_reply(200, sim.stats)
    if action == "reset-stats" and request.method == "POST":
        sim.reset_stats()
        return json_reply(200, sim.stats)
    switchable: dict[str, tuple[str, Faults | CommandQuirks]] = {
        "faults": ("faults", sim.faults),
        "command-quirks": ("command quirks", sim.command_quirks),
    }
    if action in switchable and request.method in ("GET", "POST"):
        described, switches = switchable[action]
        if request.method == "POST":
            try:
                switches.update(body if isinstance(body, dict) else {})
            except (KeyError, TypeError, ValueError) as bad:
                return json_reply(400, {"Message": f"Cannot set {described}: {bad}"})
        return json_reply(200, switches.to_dict())
    if action == "mutate" and request.method == "POST" and isinstance(body, dict):
        try:
            counts = {name: int(body.get(name, 0)) for name in ("update", "insert", "delete")}
            return json_reply(200, sim.mutate(str(body.get("entity")), **counts))
        except (KeyError, ValueError) as bad:
            return json_reply(400, {"Message": f"Cannot mutate: {bad}"})
    return json_reply(404, {"Message": f"Unknown simulator control {request.method} {request.path}"})
