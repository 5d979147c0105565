"""The simulated Nexudus account: its records, the API's semantics on them, and test hooks.

All record access goes through one lock, so the Python API is safe to use while the HTTP
server runs. The HTTP layer (`api.py`, `server.py`) only parses, authenticates and frames.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Literal

from nexudus_assets.nexudus.entities import (
    ACCESS_TOKENS,
    COWORKER_CONTRACTS,
    COWORKER_TIME_PASSES,
    ENTITIES,
    Entity,
)
from nexudus_assets.simulator import commands
from nexudus_assets.simulator.data import (
    Generator,
    InterleavedIds,
    World,
    drift_schema,
    label,
    tick_fraction,
    utc_stamp,
)
from nexudus_assets.simulator.dialect import Dialect
from nexudus_assets.simulator.faults import HOSTILE_IDS, Faults
from nexudus_assets.simulator.limits import Limits, RateLimiter
from nexudus_assets.simulator.live import Clock, LiveAccount, LiveChanges
from nexudus_assets.simulator.sign_in import DEFAULT_PASSWORD, DEFAULT_USERNAME, Accounts
from nexudus_assets.simulator.store import Table, coerce

ListShape = Literal["legacy", "modern"]
Answer = tuple[int, Any]  # (HTTP status, JSON body)

#: Where each entity's Ids start; distinct ranges make Ids mixed up between entities visible.
FIRST_IDS = {
    ACCESS_TOKENS: 10_000_000,
    COWORKER_CONTRACTS: 20_000_000,
    COWORKER_TIME_PASSES: 30_000_000,
}
#: With `Dialect.long_ids`: where each entity's two interleaved Id blocks start, beyond 2^32.
LONG_ID_BLOCKS = {
    ACCESS_TOKENS: (5_000_000_000, 9_000_000_000),
    COWORKER_CONTRACTS: (6_000_000_000, 10_000_000_000),
    COWORKER_TIME_PASSES: (7_000_000_000, 11_000_000_000),
}
#: With `Dialect.long_ids`: added to the Ids of the records the entities point at.
LONG_RELATION_OFFSET = 3_000_000_000
#: What `Dialect.lone_surrogate` puts into one access token: a string cut in the middle of an emoji.
CUT_MID_EMOJI = "Front desk \ud83d"
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 25
NOT_FOUND: Answer = (404, "Not found")
#: The stamps the API gives in UTC (with `Z`); business dates come bare, in local time.
UTC_STAMPS = ("CreatedOn", "UpdatedOn")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _naive_utc(moment: dt.datetime | None) -> dt.datetime:
    if moment is None:
        return _utc_now().replace(hour=0, minute=0, second=0)
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    for key, value in params.items():
        if key.lower() == name:
            try:
                return int(value)
            except ValueError:
                return default
    return default


def validation_answer(errors: list[tuple[str, Any, str]]) -> Answer:
    """HTTP 400 in the documented shape; errors are (property, attempted value, message)."""
    prop, _, message = errors[0]
    return 400, {
        "Status": 400,
        "Message": f"{prop}: {message}",
        "Value": None,
        "WasSuccessful": False,
        "Errors": [{"AttemptedValue": value, "Message": msg, "PropertyName": name} for name, value, msg in errors],
    }


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class Simulator:
    def __init__(
        self,
        seed: int = 1,
        tokens: int = 100,
        contracts: int = 50,
        passes: int = 50,
        now: dt.datetime | None = None,
        list_shape: ListShape = "legacy",
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        totp_secret: str | None = None,
        access_token_ttl: float = 7 * 24 * 3600,
        refresh_token_ttl: float = 15 * 24 * 3600,
        one_token_per_client_id: bool = False,
        enforce_limits: bool = False,
        faults: Faults | None = None,
        limits: Limits | None = None,
        dialect: Dialect | None = None,
        live_changes: LiveChanges | None = None,
        clock: Clock | None = None,
    ) -> None:
        """`live_changes`: the account changes as `clock` (naive UTC; the wall clock by default) moves on."""
        if list_shape not in ("legacy", "modern"):
            raise ValueError(f"list_shape must be 'legacy' or 'modern', not {list_shape!r}")
        self.now = _naive_utc(now)
        self.list_shape: ListShape = list_shape
        self.dialect = dialect or Dialect()
        self.accounts = Accounts(
            username, password, totp_secret, access_token_ttl, refresh_token_ttl, one_token_per_client_id
        )
        self.enforce_limits = enforce_limits
        self.limiter = RateLimiter(limits or Limits())
        self.faults = faults if faults is not None else Faults(seed=seed)
        #: Called with (entity, page number) after each list page is built, before it is sent, outside the lock.
        self.on_list_page: Callable[[Entity, int], None] | None = None
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._reset_stats()
        self._commands_run: list[dict[str, Any]] = []
        self.command_quirks = commands.CommandQuirks()

        long_ids = self.dialect.long_ids
        self.world = World(random.Random(f"{seed}:world"), id_offset=LONG_RELATION_OFFSET if long_ids else 0)
        # Each entity draws from its own stream so that one entity's count leaves the others alone.
        self._mutator = Generator(random.Random(f"{seed}:mutations"), self.world)
        self._tables: dict[Entity, Table] = {}
        self._interleaved: dict[Entity, InterleavedIds] = {}
        for entity, count in (
            (ACCESS_TOKENS, tokens),
            (COWORKER_CONTRACTS, contracts),
            (COWORKER_TIME_PASSES, passes),
        ):
            table = Table(entity, partial(self._mutator.display, entity))
            generator = Generator(random.Random(f"{seed}:{entity.name}"), self.world)
            if long_ids:
                self._interleaved[entity] = InterleavedIds(*LONG_ID_BLOCKS[entity])
            for record in generator.records(entity, count, FIRST_IDS[entity], self.now):
                if long_ids:
                    record["Id"] = self._interleaved[entity].take(generator.rng)
                table.add(record["Id"], record)
            table.index_stamps()
            self._tables[entity] = table
        if self.dialect.lone_surrogate and tokens:
            tokens_table = self._tables[ACCESS_TOKENS]
            tokens_table[tokens_table.ordered_keys()[0]]["Description"] = CUT_MID_EMOJI
        self.live = LiveAccount(
            live_changes or LiveChanges(),
            clock or _utc_now,
            seed,
            Generator(random.Random(f"{seed}:live-records"), self.world),
            self._tables,
            self._next_id,
        )

    def catch_up(self) -> int:
        """Apply the live changes that have fallen due by the clock; returns how many. Every API request does."""
        if not self.live.changes.enabled:
            return 0
        with self._lock:
            return self.live.catch_up()

    # ---------------------------------------------------------------- data access for tests

    def table(self, entity: Entity | str) -> Table:
        """An entity by `Entity`, its name (`AccessToken`) or its table (`access_tokens`)."""
        if isinstance(entity, Entity):
            return self._tables[entity]
        for candidate in ENTITIES:
            if entity in (candidate.name, candidate.table):
                return self._tables[candidate]
        raise KeyError(f"unknown entity {entity!r}")

    def records(self, entity: Entity | str) -> list[dict[str, Any]]:
        """Every record in object shape, its dates as the dialect serves them."""
        with self._lock:
            table = self.table(entity)
            return [self._served(table, key) for key in table.ordered_keys()]

    def get(self, entity: Entity | str, record_id: int) -> dict[str, Any] | None:
        with self._lock:
            table = self.table(entity)
            return self._served(table, record_id) if record_id in table else None

    def insert(self, entity: Entity | str, count: int = 1) -> list[int]:
        with self._lock:
            table = self.table(entity)
            ids = []
            for _ in range(count):
                now = _utc_now()
                record_id = self._next_id(table)
                table.add(record_id, self._mutator.record(table.entity, record_id, now, now, now))
                ids.append(record_id)
            return ids

    def update(self, entity: Entity | str, ids: Iterable[int], changes: Mapping[str, Any] | None = None) -> None:
        """Change records by wire name (None: a realistic random change). Bumps UpdatedOn."""
        with self._lock:
            table = self.table(entity)
            now = _utc_now()
            ids = list(ids)
            for record in self._existing(table, ids):
                record.update(UpdatedOn=utc_stamp(now), UpdatedBy="System")
                record.update(changes if changes is not None else self._mutator.change(table.entity, record, now))
            table.changed(ids)

    def delete(self, entity: Entity | str, ids: Iterable[int]) -> None:
        with self._lock:
            table = self.table(entity)
            ids = list(ids)
            self._existing(table, ids)
            for record_id in ids:
                table.remove(record_id)

    @staticmethod
    def _existing(table: Table, ids: Iterable[int]) -> list[dict[str, Any]]:
        """The records, or KeyError before anything changes if one is missing."""
        found = []
        for record_id in ids:
            record = table.get(record_id)
            if record is None:
                raise KeyError(f"{table.entity.name} {record_id} does not exist")
            found.append(record)
        return found

    def put_raw(self, entity: Entity | str, record: dict[str, Any]) -> int:
        """Store a record exactly as given, to be served verbatim. Returns the key it is
        ordered by: its Id when that is an int, otherwise a fresh one."""
        with self._lock:
            table = self.table(entity)
            record_id = record.get("Id")
            if not isinstance(record_id, int) or isinstance(record_id, bool):
                record_id = self._next_id(table)
            table.add(record_id, dict(record), raw=True)
            return record_id

    def mutate(self, entity: Entity | str, update: int = 0, insert: int = 0, delete: int = 0) -> dict[str, list[int]]:
        """A random realistic mix of changes, deterministic per seed. Returns the Ids touched."""
        with self._lock:
            table = self.table(entity)
            keys = table.ordered_keys()
            candidates = [key for key in keys if key not in table.raw] if table.raw else keys
            chosen = self._mutator.rng.sample(candidates, min(update + delete, len(candidates)))
            deleted, updated = sorted(chosen[:delete]), sorted(chosen[delete:])
            self.update(table.entity, updated)
            self.delete(table.entity, deleted)
            inserted = self.insert(table.entity, insert)
        return {"updated": updated, "inserted": inserted, "deleted": deleted}

    def _next_id(self, table: Table) -> int:
        interleaved = self._interleaved.get(table.entity)
        if interleaved is not None:
            return interleaved.take(self._mutator.rng)
        return table.last_key + self._mutator.rng.choice((1, 1, 2, 3))

    def revoke_tokens(self) -> None:
        """Invalidate every access and refresh token issued so far, as a password change would."""
        self.accounts.revoke()

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token handed out, e.g. to check that none leaks into logs."""
        return self.accounts.issued()

    # ---------------------------------------------------------------- observations

    @property
    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "requests": self._requests,
                "throttled": self._throttled,
                "by_status": dict(self._by_status),
                "by_path": dict(self._by_path),
            }

    def reset_stats(self) -> None:
        """Zero the counters and clear the request log."""
        with self._stats_lock:
            self._reset_stats()

    def _reset_stats(self) -> None:
        self._requests = self._throttled = 0
        self._by_status: Counter[int] = Counter()
        self._by_path: Counter[str] = Counter()
        self._request_log: list[tuple[str, str, dict[str, str], int]] = []

    def record_request(self, method: str, path: str, query: dict[str, str], status: int) -> None:
        """Status 0 stands for a request answered by closing the connection."""
        with self._stats_lock:
            self._requests += 1
            self._throttled += status in (409, 429)
            self._by_status[status] += 1
            self._by_path[path] += 1
            self._request_log.append((method, path, query, status))

    @property
    def request_log(self) -> list[tuple[str, str, dict[str, str], int]]:
        with self._stats_lock:
            return list(self._request_log)

    @property
    def commands_run(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._commands_run)

    # ---------------------------------------------------------------- API semantics

    def list_page(self, entity: Entity, params: Mapping[str, str]) -> tuple[Answer, int]:
        """A list answer (status, envelope with records in the configured shape) and its page number."""
        dialect = self.dialect
        page = max(1, _int_param(params, "page", 1))
        asked = max(1, _int_param(params, "size", DEFAULT_PAGE_SIZE))
        size = min(MAX_PAGE_SIZE, dialect.max_page_size, asked)
        faults = self.faults
        with self._lock:
            table = self.table(entity)
            query = table.parse_query(self._filters_in_utc(table, params))
            keys = table.select(query)
            start = (page - 1) * size
            endless = faults.endless_pages and query.ids is None and bool(keys)
            if endless:
                records = self._endless_page(table, keys, start, size)
            else:
                records = [self._list_record(table, key) for key in keys[start : start + size]]
            total = len(keys)
            if query.ids is None and not endless:
                self._move_between_pages(table, keys[start : start + size], more=start + size < total, size=size)
        self._replace_ids(records, start, faults.hostile_ids)
        if faults.schema_drift:
            for record in records:
                drift_schema(entity, record)
        if dialect.ids_not_found_404 and query.ids is not None and not total:
            return NOT_FOUND, page
        claimed = total + max(0, faults.total_items_inflation)
        if dialect.envelope == "minimal":
            return (200, {"Records": records, "TotalItems": claimed}), page
        paged_by = min(asked, MAX_PAGE_SIZE) if dialect.pages_from_requested_size else size
        pages = page + 1 if endless else math.ceil(claimed / paged_by)
        first = start + 1 if claimed else 0
        shown_size = min(asked, MAX_PAGE_SIZE) if dialect.echo_requested_size else size
        return (
            200,
            {
                "Records": records,
                "CurrentPageSize": shown_size,
                "CurrentPage": page,
                "CurrentOrderField": query.order_by,
                "CurrentSortDirection": -1 if query.descending else 1,
                "FirstItem": first,
                "HasNextPage": page < pages,
                "HasPreviousPage": page > 1,
                "LastItem": min(start + size, claimed) if claimed else 0,
                "PageNumber": page,
                "PageSize": shown_size,
                "TotalItems": claimed,
                "TotalPages": pages,
            },
        ), page

    def _filters_in_utc(self, table: Table, params: Mapping[str, str]) -> Mapping[str, str]:
        """The range filters' dates read in the dialect's zone, as UTC: the records stamp in UTC."""
        hours = self.dialect.filter_utc_offset_hours
        if not hours:
            return params
        shifted = dict(params)
        for name, value in params.items():
            lowered = name.lower()
            if not lowered.startswith(("from_", "to_")):
                continue
            wire = table.field(lowered.split("_", 1)[1].removeprefix(table.entity.name.lower() + "_"))
            if wire is None or table.kinds[wire] != "date":
                continue
            try:
                local = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                continue
            shifted[name] = (local - dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M")
        return shifted

    def _move_between_pages(self, table: Table, served: list[int], *, more: bool, size: int) -> None:
        """The list changes the faults ask for, once a page is served and before the next is asked for."""
        faults = self.faults
        if faults.drift_between_pages > 0 and more and served:
            # A record on the page just served goes and one after the boundary comes: every later
            # record shifts one place left, and `TotalItems` stays the same.
            faults.drift_between_pages -= 1
            self.delete(table.entity, [served[len(served) // 2]])
            self.insert(table.entity)
        if faults.growing_total:
            self.insert(table.entity, size)

    def _endless_page(self, table: Table, keys: list[int], start: int, size: int) -> list[dict[str, Any]]:
        """Real records over and over, each under an Id never served before: no end in sight."""
        records = []
        for offset in range(start, start + size):
            record = self._list_record(table, keys[offset % len(keys)])
            record["Id"] = table.last_key + 1 + offset
            records.append(record)
        return records

    @staticmethod
    def _replace_ids(records: list[dict[str, Any]], start: int, hostile: tuple[str, ...]) -> None:
        """Serve the records at list positions 1, 3, 5, ... under the hostile Ids, one each."""
        for offset, record in enumerate(records, start=start):
            slot, odd = divmod(offset, 2)
            if odd and slot < len(hostile):
                record["Id"] = HOSTILE_IDS[hostile[slot]]

    def _list_record(self, table: Table, key: int) -> dict[str, Any]:
        row = table[key]
        if key in table.raw:
            return dict(row)
        display = self._mutator.display(table.entity, row)
        if self.list_shape == "modern":
            return self._stamped(table, {**row, **display})
        rename = table.legacy
        shaped = {rename.get(name, name): value for name, value in row.items()}
        shaped.update((rename.get(name, name), value) for name, value in display.items())
        return self._stamped(table, shaped)

    def _served(self, table: Table, key: int) -> dict[str, Any]:
        """A copy of a stored record in object shape; one stored by `put_raw` exactly as given."""
        record = dict(table[key])
        return record if key in table.raw else self._stamped(table, record)

    def _stamped(self, table: Table, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its dates written as the dialect writes them (stored: seconds, `Z` or bare)."""
        dialect = self.dialect
        if dialect.tick_fractions:
            for name in UTC_STAMPS:
                value = record.get(name)
                if isinstance(value, str):
                    record[name] = tick_fraction(value, record.get("Id") or 0)
        if dialect.utc_suffix != "Z":
            for name in UTC_STAMPS:
                value = record.get(name)
                if isinstance(value, str) and value.endswith("Z"):
                    record[name] = value[:-1] + dialect.utc_suffix
        if dialect.business_dates_utc:
            business_dates = [name for name, kind in table.kinds.items() if kind == "date" and name not in UTC_STAMPS]
            for name in business_dates:
                value = record.get(name)
                if isinstance(value, str) and len(value) == 19:  # bare, at seconds precision, as stored
                    record[name] = value + "Z"
        return record

    def read(self, entity: Entity, record_id: int) -> Answer:
        record = self.get(entity, record_id)
        return (200, record) if record is not None else NOT_FOUND

    def _body_values(
        self, table: Table, body: dict[str, Any], names: Iterable[str]
    ) -> tuple[dict[str, Any], list[tuple[str, Any, str]]]:
        """Typed values for `names` found in a request body (any accepted spelling)."""
        given: dict[str, Any] = {}
        for name, value in body.items():
            wire = table.field(name)
            # The object-shape name wins over an older alias (`BusinessId` over `Business`).
            if wire is not None and (name == wire or wire not in body):
                given[wire] = value
        values, errors = {}, []
        for wire in names:
            if wire in given:
                try:
                    values[wire] = coerce(table.kinds[wire], given[wire])
                except ValueError:
                    errors.append((wire, given[wire], f"The value '{given[wire]}' is not valid."))
        return values, errors

    def create(self, entity: Entity, body: Any, user: str) -> Answer:
        if not isinstance(body, dict):
            return validation_answer([("Body", None, "A JSON object is required.")])
        with self._lock:
            table = self.table(entity)
            writable = dict.fromkeys((*entity.put_fields, *entity.create_required, "SystemId"))
            values, errors = self._body_values(table, body, writable)
            errors += [
                (name, values.get(name), "may not be null or empty")
                for name in entity.create_required
                if _empty(values.get(name))
            ]
            if errors:
                return validation_answer(errors)
            now = _utc_now()
            copies = min(100, max(1, values.get("CreateMultiple") or 1)) if "CreateMultiple" in values else 1
            ids = []
            for _ in range(copies):
                record: dict[str, Any] = dict(self._mutator.template(entity))
                record.update({wire: False for wire in record if table.kinds.get(wire) == "bool"})
                record.update(values)
                record_id = self._next_id(table)
                record.update(
                    Id=record_id,
                    CreatedOn=utc_stamp(now),
                    UpdatedOn=utc_stamp(now),
                    UpdatedBy=user,
                    UniqueId=self._mutator.guid(),
                )
                self._mutator.complete(entity, record, now)
                table.add(record_id, record)
                ids.append(record_id)
            name = label(entity, record, self._mutator.display(entity, record))
        return 200, {
            "Status": 200,
            "WasSuccessful": True,
            "Message": f"Record '{name}' has been successfully created.",
            "Value": {"Id": ids[0]},
        }

    def replace(self, entity: Entity, body: Any, user: str) -> Answer:
        """PUT: every documented field missing from the body is cleared (the documented trap)."""
        if not isinstance(body, dict):
            return validation_answer([("Body", None, "A JSON object is required.")])
        try:
            record_id = coerce("int", body.get("Id"))
        except ValueError:
            record_id = None
        if record_id is None:
            return validation_answer([("Id", body.get("Id"), "may not be null")])
        with self._lock:
            table = self.table(entity)
            record = table.get(record_id)
            if record is None:
                return NOT_FOUND
            values, errors = self._body_values(table, body, (*entity.put_fields, "SystemId"))
            cleared = {
                wire: False if table.kinds[wire] == "bool" else None for wire in entity.put_fields if wire not in values
            }
            values.update(cleared)
            required = [name for name in entity.create_required if name in entity.put_fields]
            errors += [
                (name, values.get(name), "may not be null or empty") for name in required if _empty(values.get(name))
            ]
            if errors:
                return validation_answer(errors)
            now = utc_stamp(_utc_now())
            record.update(values, UpdatedOn=now, UpdatedBy=user)
            table.changed((record_id,))
            name = label(entity, record, self._mutator.display(entity, record))
        return 200, {
            "Status": 200,
            "WasSuccessful": True,
            "Message": f"Record '{name}' has been successfully updated.",
            "Value": {"Id": record_id},
            "OpenInDialog": False,
            "OpenInWindow": False,
            "RedirectURL": None,
            "JavaScript": None,
            "UpdatedOn": now,
            "UpdatedBy": user,
            "Errors": None,
        }

    def remove(self, entity: Entity, record_id: int) -> Answer:
        with self._lock:
            table = self.table(entity)
            if record_id not in table:
                return NOT_FOUND
            table.remove(record_id)
        return 200, {
            "Status": 200,
            "WasSuccessful": True,
            "Message": "The record was deleted successfully.",
            "Value": None,
            "OpenInDialog": False,
            "RedirectURL": None,
            "JavaScript": None,
            "Errors": None,
        }

    def command_catalogue(self, entity: Entity) -> list[dict[str, Any]]:
        quirks = self.command_quirks
        return [
            command.describe(untyped=quirks.untyped_parameters)
            for command in commands.CATALOGUE[entity.name]
            if command.key not in quirks.unlisted
        ]

    def run_command(self, entity: Entity, body: Any, user: str) -> dict[str, Any]:
        """Always answered with HTTP 200; only `WasSuccessful` tells whether it worked."""
        quirks = self.command_quirks
        ids = body.get("Ids") if isinstance(body, dict) else None
        if quirks.seconds_per_id > 0 and isinstance(ids, list):
            time.sleep(quirks.seconds_per_id * len(ids))  # outside the lock: other requests go on
        now = _utc_now()
        with self._lock:
            table = self.table(entity)
            try:
                message, touched = commands.execute(
                    table, body, self.faults.failing_command_ids, now, partial=quirks.partial_failure
                )
            except commands.CommandError as failure:
                touched = failure.touched if isinstance(failure, commands.PartialFailure) else []
                for record_id in touched:
                    table[record_id].update(UpdatedOn=utc_stamp(now), UpdatedBy=user)
                table.changed(touched)
                answer = {
                    "Status": 500,
                    "WasSuccessful": False,
                    "Message": str(failure),
                    "Value": None,
                    "Errors": None,
                }
            else:
                for record_id in touched:
                    table[record_id].update(UpdatedOn=utc_stamp(now), UpdatedBy=user)
                table.changed(touched)
                answer = {
                    "Status": 200,
                    "WasSuccessful": True,
                    "Message": message,
                    "Value": {"Id": body["Ids"][0]},
                    "UpdatedOn": utc_stamp(now),
                    "UpdatedBy": user,
                    "Errors": None,
                    "OpenInDialog": False,
                    "OpenInWindow": False,
                    "RedirectURL": None,
                    "JavaScript": None,
                }
            body = body if isinstance(body, dict) else {}
            self._commands_run.append(
                {
                    "entity": entity.name,
                    "key": body.get("Key"),
                    "ids": body.get("Ids"),
                    "parameters": body.get("Parameters"),
                    "was_successful": answer["WasSuccessful"],
                }
            )
        return answer
