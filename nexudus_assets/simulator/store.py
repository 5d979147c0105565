"""In-memory records of one entity, with the documented filtering, ordering and paging.

Records are stored in object shape (the single-record GET shape) keyed by Id. Field types
come from the shared pydantic models so that filters compare the way the API types them.
"""

from __future__ import annotations

import datetime as dt
import operator
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, get_args
from uuid import UUID

from nexudus_assets.nexudus.entities import Entity
from nexudus_assets.nexudus.models import NexudusRecord

Kind = Literal["int", "number", "bool", "date", "uuid", "str"]

#: Fields every record carries after its own attributes, in the order the reference shows them.
TRAILER = ("CreatedOn", "UpdatedOn", "UpdatedBy", "UniqueId", "SystemId")

_QUERY_CACHE_SIZE = 64
#: The field a range filter finds through an index rather than a scan: the incremental sync's.
INDEXED = "UpdatedOn"
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {"eq": operator.eq, "ge": operator.ge, "le": operator.le}


def _kind(annotation: Any) -> Kind:
    base = next(t for t in (get_args(annotation) or (annotation,)) if t is not type(None))
    if base is bool:
        return "bool"
    if isinstance(base, type) and issubclass(base, int):
        return "int"
    if base is Decimal:
        return "number"
    if base is dt.datetime:
        return "date"
    if base is UUID:
        return "uuid"
    return "str"


def field_kinds(model: type[NexudusRecord]) -> dict[str, Kind]:
    """Wire name (object shape) -> how values of that field are typed."""
    wire = model.wire_names()
    return {wire[name]: _kind(field.annotation) for name, field in model.model_fields.items()}


def display_names(model: type[NexudusRecord]) -> tuple[str, ...]:
    wire = model.wire_names()
    return tuple(wire[name] for name in model.display_fields)


def object_layout(model: type[NexudusRecord]) -> tuple[str, ...]:
    """Wire names of a stored record: Id, the entity's attributes, then the common trailer."""
    displayed = set(display_names(model))
    own = [w for w in model.wire_names().values() if w != "Id" and w not in TRAILER and w not in displayed]
    return ("Id", *own, *TRAILER)


def parse_datetime(value: str) -> dt.datetime:
    """ISO text (bare, `Z` or offset) -> naive UTC; bare values are taken as they are."""
    parsed = dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def coerce(kind: Kind, value: Any) -> Any:
    """A value from a request body -> the stored form. Raises ValueError when it does not fit."""
    if value is None:
        return None
    if kind == "bool":
        return _as_bool(value)
    if kind == "int":
        number = _as_number(value)
        if number != int(number):
            raise ValueError(value)
        return int(number)
    if kind == "number":
        return float(_as_number(value))
    if kind == "date":
        if not isinstance(value, str):
            raise ValueError(value)
        return parse_datetime(value).replace(microsecond=0).isoformat()
    if kind == "uuid":
        if value == "":
            return None
        return str(UUID(str(value)))
    if isinstance(value, (dict, list)):
        raise ValueError(value)
    return str(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(value)


def _as_number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    return value if isinstance(value, (int, float)) else float(value)


def minute_key(value: Any) -> str:
    """A date as sortable `YYYY-MM-DDTHH:MM` text: filters compare at minute precision."""
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip().removesuffix("Z")  # `Z` is UTC, which bare CreatedOn-style values are too
    dt.datetime.fromisoformat(text)  # refuses anything that is not a real date
    # Stored values are canonical; only other spellings (offsets, spaces, no time) need the slow way.
    if len(text) < 16 or text[10] != "T" or (len(text) > 19 and text[19] != "."):
        text = parse_datetime(text).isoformat()
    return text[:16]


def compare_key(kind: Kind, value: Any) -> Any:
    """A comparable form of a stored or queried value. Raises ValueError when it does not fit."""
    if value is None:
        return None
    if kind == "date":
        return minute_key(value)
    if kind in ("uuid", "str"):
        if isinstance(value, (dict, list)):
            raise ValueError(value)
        return str(value).casefold()
    return coerce(kind, value)


@dataclass(frozen=True)
class Query:
    """A parsed list request. Hashable: it is the key of the result cache."""

    #: `<Name>_Id=[..]` / `Id=..`; None when the request does not restrict Ids.
    ids: frozenset[int] | None = None
    #: (wire name, "eq" | "ge" | "le", compare key)
    filters: tuple[tuple[str, str, Any], ...] = ()
    order_by: str = "Id"
    descending: bool = False
    #: A filter value that cannot match anything (e.g. `AccessToken_MinutesLeft=abc`).
    impossible: bool = False

    @property
    def is_plain(self) -> bool:
        return self.ids is None and not self.filters and self.order_by == "Id" and not self.descending


class StampIndex:
    """Keys by the minute of one date field, so a range of minutes costs the records in it.

    Filters compare dates at minute precision, so records are bucketed by their minute key,
    and a lookup bisects the sorted minutes. A new minute later than every other (the usual
    "now") is appended and keeps them sorted; an earlier one marks them for a sort at the next
    lookup. An emptied bucket stays listed until empty ones are half of them. A real server
    answers a filtered page from an index too: a benchmark of the client must not measure a scan.
    """

    def __init__(self, entries: Iterable[tuple[int, str | None]] = ()) -> None:
        """`entries`: (key, minute) to start with, sorted once rather than minute by minute."""
        self._minute_of = {key: minute for key, minute in entries if minute is not None}
        self._keys: dict[str, set[int]] = {}
        for key, minute in self._minute_of.items():
            bucket = self._keys.get(minute)
            if bucket is None:
                self._keys[minute] = {key}
            else:
                bucket.add(key)
        self._minutes = sorted(self._keys)
        self._unsorted = False
        self._empty = 0

    def put(self, key: int, minute: str | None) -> None:
        """Index `key` under `minute`; None (no value, or one no filter can match) unindexes it."""
        old = self._minute_of.get(key)
        if old == minute:
            return
        if old is not None:
            left = self._keys[old]
            left.discard(key)
            self._empty += not left
            del self._minute_of[key]
        if minute is None:
            return
        self._minute_of[key] = minute
        bucket = self._keys.get(minute)
        if bucket is None:
            self._keys[minute] = {key}
            if self._minutes and minute < self._minutes[-1]:
                self._unsorted = True
            self._minutes.append(minute)
            return
        self._empty -= not bucket
        bucket.add(key)

    def between(self, low: str | None, high: str | None) -> list[int]:
        """Keys whose minute is within [low, high] (None: unbounded), ascending."""
        if self._empty * 2 > len(self._minutes):
            self._keys = {minute: keys for minute, keys in self._keys.items() if keys}
            self._minutes = list(self._keys)
            self._unsorted, self._empty = True, 0
        if self._unsorted:
            self._minutes.sort()
            self._unsorted = False
        minutes = self._minutes
        start = 0 if low is None else bisect_left(minutes, low)
        end = len(minutes) if high is None else bisect_right(minutes, high)
        found: list[int] = []
        for minute in minutes[start:end]:
            found.extend(self._keys[minute])
        found.sort()
        return found


class Table:
    """Records of one entity. Not thread-safe: the Simulator serialises access."""

    def __init__(self, entity: Entity, display: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.entity = entity
        self.kinds: dict[str, Kind] = field_kinds(entity.model)
        self.display_names = display_names(entity.model)
        self.legacy = entity.model.legacy_list_names()
        self._display = display
        # Every name a request may use for a field, lower-cased -> object wire name.
        self._names = {wire.lower(): wire for wire in self.kinds}
        self._names.update({legacy.lower(): wire for wire, legacy in self.legacy.items()})
        self._rows: dict[int, dict[str, Any]] = {}
        self._order: list[int] = []  # keys, ascending; kept sorted so plain pages need no sort
        #: Keys of records stored by `put_raw`: served verbatim, never reshaped.
        self.raw: set[int] = set()
        self.version = 0
        self._cache: dict[Query, tuple[int, list[int]]] = {}
        self.last_key = 0
        self._stamps = StampIndex()
        #: The index is (re)built in one go before its next use: at first (`index_stamps` builds it
        #: once the records are in), and after a change in place that named no records.
        self._stamps_stale = True

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __getitem__(self, key: int) -> dict[str, Any]:
        return self._rows[key]

    def get(self, key: int) -> dict[str, Any] | None:
        return self._rows.get(key)

    def ordered_keys(self) -> list[int]:
        """All keys by Id. The caller must not change the list."""
        return self._order

    def add(self, key: int, record: dict[str, Any], *, raw: bool = False) -> None:
        if key in self._rows:
            self.raw.discard(key)
        elif self._order and key < self._order[-1]:
            insort(self._order, key)
        else:
            self._order.append(key)
        self._rows[key] = record
        if raw:
            self.raw.add(key)
        self.last_key = max(self.last_key, key)
        self.changed((key,))

    def remove(self, key: int) -> None:
        del self._rows[key]
        del self._order[bisect_left(self._order, key)]
        self.raw.discard(key)
        self.changed((key,))

    def changed(self, keys: Iterable[int] | None = None) -> None:
        """Call after changing stored records in place, naming them (`keys`) so that the
        `UpdatedOn` index follows; a change that names none makes the next range filter
        rebuild the index from every record."""
        self.version += 1
        if keys is None:
            self._stamps_stale = True
        elif not self._stamps_stale:
            for key in keys:
                self._stamps.put(key, self._stamp_key(key))

    def _stamp_key(self, key: int) -> str | None:
        """The indexed field's compare key; None when absent, gone, or matching no filter."""
        if key not in self._rows:
            return None
        try:
            return minute_key(self.value(key, INDEXED))
        except (ValueError, TypeError):
            return None

    def index_stamps(self) -> StampIndex:
        """The `UpdatedOn` index, built now if it is not up to date."""
        if self._stamps_stale:
            self._stamps = StampIndex((key, self._stamp_key(key)) for key in self._order)
            self._stamps_stale = False
        return self._stamps

    def field(self, name: str) -> str | None:
        """Any accepted spelling of a field (`Business`, `businessid`) -> its object wire name."""
        return self._names.get(name.lower())

    def value(self, key: int, wire: str) -> Any:
        row = self._rows[key]
        if wire in row:
            return row[wire]
        if key in self.raw:
            return row.get(self.legacy.get(wire, wire))
        if wire in self.display_names:
            return self._display(row).get(wire)
        return None

    def parse_query(self, params: Mapping[str, str]) -> Query:
        """Filters and ordering from list query parameters; unknown parameters are ignored."""
        prefix = self.entity.name.lower() + "_"
        ids: frozenset[int] | None = None
        filters: list[tuple[str, str, Any]] = []
        impossible = False
        order_by, descending = "Id", False
        for raw_name, value in params.items():
            name = raw_name.lower()
            if name == "orderby":
                order_by = self.field(value) or "Id"
                continue
            if name == "dir":
                descending = value.strip().lower() in ("descending", "desc", "-1")
                continue
            if value == "":
                continue
            op = "eq"
            for range_prefix, range_op in (("from_", "ge"), ("to_", "le")):
                if name.startswith(range_prefix):
                    name, op = name[len(range_prefix) :], range_op
            if op == "eq" and name in ("id", "uniqueid"):
                name = prefix + name
            if not name.startswith(prefix):
                continue
            wire = self.field(name[len(prefix) :])
            if wire is None:
                continue
            kind = self.kinds[wire]
            if op != "eq" and kind not in ("int", "number", "date"):
                continue
            if wire == "Id" and op == "eq":
                try:
                    wanted = frozenset(int(part) for part in value.strip("[] ").split(",") if part.strip())
                except ValueError:
                    impossible = True
                    continue
                ids = wanted if ids is None else ids & wanted
                continue
            try:
                filters.append((wire, op, compare_key(kind, value)))
            except ValueError:
                impossible = True
        return Query(ids, tuple(sorted(filters, key=repr)), order_by, descending, impossible)

    def select(self, query: Query) -> list[int]:
        """Keys matching the query, in its order. The caller must not change the list."""
        if query.impossible:
            return []
        if query.is_plain:
            return self._order
        cached = self._cache.get(query)
        if cached and cached[0] == self.version:
            return cached[1]
        filters = query.filters
        if query.ids is not None:
            keys = sorted(query.ids & self._rows.keys())
        elif any(wire == INDEXED for wire, _, _ in filters):
            keys = self._in_range(filters)
            filters = tuple(check for check in filters if check[0] != INDEXED)
        else:
            keys = self._order
        if filters:
            keys = self._filter(keys, filters)
        if query.order_by == "Id":
            result = keys[::-1] if query.descending else list(keys)
        else:
            result = sorted(keys, key=self._sort_key(query.order_by), reverse=query.descending)
        if len(self._cache) >= _QUERY_CACHE_SIZE:
            del self._cache[next(iter(self._cache))]
        self._cache[query] = (self.version, result)
        return result

    def _in_range(self, filters: tuple[tuple[str, str, Any], ...]) -> list[int]:
        """Keys that pass every filter on the indexed field, ascending, found by the index."""
        lows = [wanted for wire, op, wanted in filters if wire == INDEXED and op in ("ge", "eq")]
        highs = [wanted for wire, op, wanted in filters if wire == INDEXED and op in ("le", "eq")]
        low, high = max(lows, default=None), min(highs, default=None)
        if low is not None and high is not None and low > high:
            return []
        return self.index_stamps().between(low, high)

    def _filter(self, keys: Iterable[int], filters: tuple[tuple[str, str, Any], ...]) -> list[int]:
        checks = [(wire, self.kinds[wire], _OPERATORS[op], wanted) for wire, op, wanted in filters]
        value = self.value
        matching = []
        for key in keys:
            for wire, kind, test, wanted in checks:
                try:
                    actual = compare_key(kind, value(key, wire))
                except (ValueError, TypeError):
                    break  # a malformed stored value matches no filter
                if actual is None or not test(actual, wanted):
                    break
            else:
                matching.append(key)
        return matching

    def _sort_key(self, wire: str) -> Callable[[int], tuple[Any, ...]]:
        kind = self.kinds[wire]

        def key(record_key: int) -> tuple[Any, ...]:
            # Nulls first, then well-typed values, then malformed ones; Id breaks ties.
            value = self.value(record_key, wire)
            if value is None:
                return (0, record_key)
            try:
                return (1, compare_key(kind, value), record_key)
            except (ValueError, TypeError):
                return (2, str(value), record_key)

        return key
