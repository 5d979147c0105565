"""Deterministic, realistic Nexudus data: the account's businesses, coworkers and products, and
records of the three entities that point at them.

Everything is drawn from the `random.Random` handed in, so (seed, now) always gives the same
account. Timestamps are naive UTC internally; `CreatedOn`/`UpdatedOn` are written with a
trailing `Z`, business dates bare (the location's local time), both at seconds precision.

Contracts carry money as live accounts do: about 30% have no `Price` of their own (the plan's
`TariffPrice` applies), and some plans are invoiced weekly, every two weeks, quarterly or yearly.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
import unicodedata
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nexudus_assets.nexudus.entities import Entity
from nexudus_assets.nexudus.models import CancellationReason
from nexudus_assets.simulator.store import object_layout

FIRST_NAMES = tuple(
    "Alice Ben Carla David Elena Farid Grace Hugo Ines James Kenji Laura Mateo Nadia Oliver Priya Quentin "
    "Rosa Samuel Tara Umar Valeria William Ximena Yusuf Zoe Marta Pablo Chloe Liam".split()
)
LAST_NAMES = tuple(
    "Martin Garcia Smith Silva Müller Rossi Dubois Novak Khan Okafor Jensen Costa Brown Kowalski Tanaka "
    "Murphy Fernández Nielsen Ahmed Wilson Moreau Santos Taylor Hughes Ruiz Patel Schmidt Evans".split()
)
COMPANIES = (
    "Northwind Labs",
    "Bluefin Studio",
    "Copperleaf Consulting",
    "Atlas Analytics",
    "Lumen Design",
    "Harbour Legal",
    "Pixel & Pine",
    "Greenway Energy",
    "Quayside Media",
    "Brightpath Tutoring",
    "Falcon Robotics",
    "Oakridge Finance",
    "Saltwater Travel",
    "Mosaic Architects",
    "Nimbus Cloud",
)
TOKEN_KINDS = ("WiFi day pass", "Guest WiFi", "Event WiFi", "Meeting room WiFi", "Visitor WiFi")
CONTRACT_NOTES = (
    "Upgraded from hot desk.",
    "Invoice to the company address.",
    "Wants a window seat.",
    "Referred by a member.",
    "Corporate agreement rate.",
    "Paused over the summer last year.",
)
PASS_NOTES = ("Bought at reception.", "Bought online.", "Part of an event package.", "Trial visit.")
MINUTES_INCLUDED = (60, 120, 300, 600, 1200, 3000, 6000)
SYSTEM_USERS = ("System", "System", "System", "reception@example.com", "manager@example.com")
ACCESS_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to confuse
#: Maps each random byte to a code character; 256 is a multiple of 32, so all are equally likely.
ACCESS_CODE_TABLE = bytes(ACCESS_CODE_ALPHABET.encode()[b % 32] for b in range(256))
CANCELLATION_REASONS = tuple(int(reason) for reason in CancellationReason)
HISTORY = dt.timedelta(days=730)
#: Members of the account; fixed, so that changing one entity's count leaves the others alone.
COWORKERS = 500
ID_GAPS = (1, 1, 1, 2, 3, 7)
QUANTITIES = (1,) * 16 + (2,) * 3 + (3,)

T = TypeVar("T")


@dataclass(frozen=True)
class Business:
    id: int
    name: str
    currency: str


@dataclass(frozen=True)
class Coworker:
    id: int
    full_name: str
    email: str
    company_name: str | None

    @property
    def billing_name(self) -> str:
        return self.company_name or self.full_name


@dataclass(frozen=True)
class Tariff:
    """A plan: its price is per invoicing period, every `invoice_every` months, or every
    `invoice_every_weeks` weeks when `invoice_every` is 0 (Nexudus's `InvoiceEvery`/`InvoiceEveryWeeks`)."""

    id: int
    business: Business
    name: str
    price: float
    invoice_every: int = 1
    invoice_every_weeks: int = 0


#: (business, plan) positions whose plan is not monthly, as live accounts have them:
#: (price per period, invoice_every, invoice_every_weeks).
OTHER_PERIODS = {
    (0, 0): (40.0, 0, 1),  # a weekly hot desk
    (1, 0): (75.0, 0, 2),  # every two weeks
    (2, 2): (10_200.0, 12, 0),  # a private office invoiced yearly
    (3, 2): (2_700.0, 3, 0),  # quarterly
}


@dataclass(frozen=True)
class TimePass:
    id: int
    business: Business
    name: str
    price: float
    uses: int


def utc_stamp(moment: dt.datetime) -> str:
    return (moment.replace(microsecond=0) if moment.microsecond else moment).isoformat() + "Z"


def tick_fraction(stamp: str, salt: int) -> str:
    """`stamp` (seconds precision, a zone suffix or none) with a 7-digit .NET fraction, zeros trimmed.

    Drawn from the stamp and `salt` (the record's Id), so a record keeps its fraction until it changes.
    """
    if len(stamp) < 19 or (len(stamp) > 19 and stamp[19] == "."):
        return stamp
    digits = f"{zlib.crc32(f'{salt}:{stamp}'.encode()) % 10_000_000:07d}".rstrip("0")
    return f"{stamp[:19]}.{digits}{stamp[19:]}" if digits else stamp


class InterleavedIds:
    """Ids handed out from two blocks in turn, as live accounts do: `low`, `high`, `low`, ..."""

    def __init__(self, low: int, high: int) -> None:
        self._next = [low, high]
        self._turn = 0

    def take(self, rng: random.Random) -> int:
        taken = self._next[self._turn]
        self._next[self._turn] += rng.choice(ID_GAPS)
        self._turn = 1 - self._turn
        return taken


def local_stamp(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment.replace(microsecond=0) if moment.microsecond else moment).isoformat()


def midnight(moment: dt.datetime) -> dt.datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def parse_local(value: Any) -> dt.datetime | None:
    """A stored business date -> datetime; anything unreadable counts as missing."""
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=None) if isinstance(value, str) else None
    except ValueError:
        return None


class World:
    """The records the three entities point at. Only their Ids and display names are served."""

    def __init__(self, rng: random.Random, coworkers: int = COWORKERS, id_offset: int = 0) -> None:
        """`id_offset` is added to every Id: beyond 2^31 it gives the long Ids of live accounts."""
        self.businesses = [
            Business(id_offset + 1_100_001, "Central Hub Madrid", "EUR"),
            Business(id_offset + 1_100_002, "Riverside Works London", "GBP"),
            Business(id_offset + 1_100_003, "Old Town Studio Lisbon", "EUR"),
            Business(id_offset + 1_100_004, "Harbour Loft Bristol", "GBP"),
        ]
        self.tariffs = [
            Tariff(id_offset + 1_300_000 + 10 * b + t, business, name, *OTHER_PERIODS.get((b, t), (price, 1, 0)))
            for b, business in enumerate(self.businesses)
            for t, (name, price) in enumerate(
                (("Hot Desk", 150.0), ("Dedicated Desk", 300.0), ("Private Office", 950.0))
            )
        ]
        self.time_passes = [
            TimePass(id_offset + 1_350_000 + 10 * b + t, business, name, price, uses)
            for b, business in enumerate(self.businesses)
            for t, (name, price, uses) in enumerate(
                (("Day Pass", 25.0, 1), ("10-Visit Pass", 200.0, 10), ("Half Day", 15.0, 1))
            )
        ]
        self.coworkers: list[Coworker] = []
        emails: set[str] = set()
        next_id = id_offset + 1_500_000
        for _ in range(coworkers):
            next_id += rng.randint(1, 4)
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            company = rng.choice(COMPANIES) if rng.random() < 0.7 else None
            domain = company.lower().replace(" & ", "").replace(" ", "") + ".example" if company else "mail.example"
            local = unicodedata.normalize("NFKD", f"{first}.{last}".lower()).encode("ascii", "ignore").decode()
            email = f"{local}@{domain}"
            if email in emails:
                email = f"{local}{next_id % 1000}@{domain}"
            emails.add(email)
            self.coworkers.append(Coworker(next_id, f"{first} {last}", email, company))
        self.business_by_id = {b.id: b for b in self.businesses}
        self.tariff_by_id = {t.id: t for t in self.tariffs}
        self.time_pass_by_id = {p.id: p for p in self.time_passes}
        self.coworker_by_id = {c.id: c for c in self.coworkers}


class Generator:
    """Makes, completes and changes records of the three entities."""

    def __init__(self, rng: random.Random, world: World) -> None:
        self.rng = rng
        self.world = world
        self._random = rng.random
        self._layouts: dict[str, dict[str, None]] = {}
        # Shared strings keep a million records small.
        self._descriptions: dict[tuple[str, str, str], str] = {}

    def template(self, entity: Entity) -> dict[str, None]:
        if entity.name not in self._layouts:
            self._layouts[entity.name] = dict.fromkeys(object_layout(entity.model))
        return self._layouts[entity.name]

    def records(self, entity: Entity, count: int, first_id: int, now: dt.datetime) -> Iterator[dict[str, Any]]:
        """`count` records with increasing Ids created over the two years before `now`."""
        start = now - HISTORY
        step = HISTORY.total_seconds() / max(count, 1)
        record_id = first_id
        for index in range(count):
            created = start + dt.timedelta(0, int((index + self._random()) * step))
            updated = created if self._chance(0.45) else self._moment(created, now)
            yield self.record(entity, record_id, created, updated, now)
            record_id += self._pick(ID_GAPS)

    def record(
        self, entity: Entity, record_id: int, created: dt.datetime, updated: dt.datetime, now: dt.datetime
    ) -> dict[str, Any]:
        make = {
            "AccessToken": self._access_token,
            "CoworkerContract": self._contract,
            "CoworkerTimePass": self._time_pass,
        }[entity.name]
        values = make(created, updated, now)
        values.update(
            Id=record_id,
            CreatedOn=utc_stamp(created),
            UpdatedOn=utc_stamp(updated),
            UpdatedBy=self._pick(SYSTEM_USERS),
            UniqueId=self.guid(),
            SystemId=f"{{ metadata: {{ id: {self._between(100000, 999999)}, processed: true }} }}"
            if self._chance(0.05)
            else None,
        )
        return {**self.template(entity), **values}

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # `random.choice`/`randint` cost several times more; a million records notice.
    def _pick(self, items: Sequence[T]) -> T:
        return items[int(self._random() * len(items))]

    def _between(self, low: int, high: int) -> int:
        return low + int(self._random() * (high - low + 1))

    def _chance(self, probability: float) -> bool:
        return self._random() < probability

    def _moment(self, earliest: dt.datetime, latest: dt.datetime) -> dt.datetime:
        """A time between the two, at whole seconds."""
        return earliest + dt.timedelta(0, int((latest - earliest).total_seconds() * self._random()))

    def _access_token(self, created: dt.datetime, updated: dt.datetime, now: dt.datetime) -> dict[str, Any]:
        included = self._pick(MINUTES_INCLUDED)
        roll = self._random()
        # A good share nearly used up: the interesting ones for "running low" reports.
        left = 0 if roll < 0.1 else self._between(1, 59) if roll < 0.35 else self._between(0, included)
        valid_from = valid_to = None
        if self._chance(0.85):
            valid_from = midnight(now) + dt.timedelta(self._between(-400, 30), 3600 * self._pick((0, 0, 8, 9)))
            valid_to = valid_from + dt.timedelta(self._pick((1, 1, 7, 30, 90, 365)))
        words = (self._pick(TOKEN_KINDS), self._pick(FIRST_NAMES), self._pick(LAST_NAMES))
        description = self._descriptions.get(words)
        if description is None:
            description = self._descriptions[words] = "{} — {} {}".format(*words)
        return {
            "AccessCode": self.rng.randbytes(8).translate(ACCESS_CODE_TABLE).decode(),
            "BusinessId": self._pick(self.world.businesses).id,
            "Description": description,
            # Read-only activity fields change with the record, so they are never after UpdatedOn.
            "LastAccess": local_stamp(self._moment(created, updated)) if self._chance(0.65) else None,
            "MinutesIncluded": included,
            "MinutesLeft": min(left, included),
            "UserLimit": self._pick((1, 1, 2, 5, 10)) if self._chance(0.6) else None,
            "ValidFrom": local_stamp(valid_from),
            "ValidTo": local_stamp(valid_to),
            "MacAddress": ":".join(f"{self._between(0, 255):02X}" for _ in range(6)) if self._chance(0.1) else None,
            "BookingGuid": self.guid() if self._chance(0.05) else None,
            "VisitorGuid": self.guid() if self._chance(0.05) else None,
        }

    def _contract(self, created: dt.datetime, _updated: dt.datetime, now: dt.datetime) -> dict[str, Any]:
        tariff = self._pick(self.world.tariffs)
        start = midnight(min(created + dt.timedelta(self._between(0, 14)), now - dt.timedelta(1)))
        # A contract renews after it starts: at least one billing month in.
        renewal = max(midnight(now) + dt.timedelta(self._between(-60, 120)), add_months(start, 1))
        quantity = self._pick(QUANTITIES)
        # Live contracts often carry no price of their own: the plan's applies.
        roll = self._random()
        price = None if roll < 0.3 else tariff.price if roll < 0.85 else round(tariff.price * 0.9, 2)
        roll = self._random()
        cancelled, active = roll < 0.15, roll < 0.85
        cancellation_date = None
        if cancelled:
            cancellation_date = midnight(now) + dt.timedelta(self._between(-90, 60))
            active = cancellation_date > now
        desk = tariff.name != "Hot Desk" and self._chance(0.8)
        desk_number = self._between(1, 80)
        terms = self._chance(0.7)
        other_tariffs = [t for t in self.world.tariffs if t.business == tariff.business and t != tariff]
        return {
            "Active": active,
            "ApplyProRating": self._chance(0.5),
            "BillingDay": self._between(1, 28),
            "CancellationDate": local_stamp(cancellation_date),
            "CancellationLimitDays": self._pick((None, 30, 60)),
            "CancellationNotes": "Member asked to leave at the end of the month."
            if cancelled and self._chance(0.5)
            else None,
            "CancellationReason": self._pick(CANCELLATION_REASONS) if cancelled else None,
            "Cancelled": cancelled,
            "CancelTeamContracts": False,
            "ContractTerm": local_stamp(add_months(start, 12)) if self._chance(0.3) else None,
            "CoworkerId": self._pick(self.world.coworkers).id,
            "FloorPlanDeskIds": str(1_700_000 + desk_number) if desk else None,
            "FloorPlanDeskNames": f"Desk {desk_number}" if desk else None,
            "IncludeSignupFee": self._chance(0.2),
            "InvoiceAdvancedCycles": self._chance(0.1),
            "InvoicedPeriod": local_stamp(add_months(renewal, -1)) if active else None,
            "IssuedById": tariff.business.id,
            "MainContract": self._chance(0.75),
            "NextAutoInvoice": local_stamp(renewal) if active else None,
            "NextTariffId": self._pick(other_tariffs).id if self._chance(0.1) else None,
            "Notes": self._pick(CONTRACT_NOTES) if self._chance(0.25) else None,
            "Price": price,
            "PricePlanTermsAccepted": terms,
            "PricePlanTermsAcceptedOn": local_stamp(start) if terms else None,
            "ProposalUniqueId": self.guid() if self._chance(0.05) else None,
            "ProRateCancellation": self._chance(0.3),
            "Quantity": quantity,
            "RenewalDate": local_stamp(renewal),
            "StartDate": local_stamp(start),
            "TariffId": tariff.id,
            "Value": round((tariff.price if price is None else price) * quantity, 2),
        }

    def _time_pass(self, created: dt.datetime, updated: dt.datetime, now: dt.datetime) -> dict[str, Any]:
        product = self._pick(self.world.time_passes)
        remaining = self._between(0, product.uses)
        used = remaining == 0
        free = self._chance(0.08)
        invoiced = not free and self._chance(0.7)
        return {
            "BusinessId": product.business.id,
            "CheckedIn": used and self._chance(0.1),
            "CoworkerId": self._pick(self.world.coworkers).id,
            "CoworkerProductUniqueId": self.guid() if self._chance(0.05) else None,
            "CreateMultiple": 1,
            "ExpireDate": local_stamp(midnight(now) + dt.timedelta(self._between(-30, 60))),
            "Free": free,
            "Invoiced": invoiced,
            "InvoiceDate": local_stamp(midnight(created)) if invoiced else None,
            "IsFromTariff": self._chance(0.15),
            "Notes": self._pick(PASS_NOTES) if self._chance(0.2) else None,
            "Price": 0.0 if free else product.price,
            "RemainingUses": remaining,
            "TimePassId": product.id,
            "TotalUses": product.uses,
            "Used": used,
            "UsedDate": local_stamp(self._moment(created, updated)) if used else None,
        }

    def complete(self, entity: Entity, record: dict[str, Any], now: dt.datetime) -> None:
        """Fill the read-only fields of a record created through the API."""
        if entity.name == "AccessToken":
            record["MinutesLeft"] = record["MinutesIncluded"]
        elif entity.name == "CoworkerContract":
            tariff = _related(self.world.tariff_by_id, record["TariffId"])
            if record["Price"] is None and tariff:
                record["Price"] = tariff.price
            if record["Value"] is None and record["Price"] is not None:
                record["Value"] = round(record["Price"] * record["Quantity"], 2)
            cancellation = parse_local(record["CancellationDate"])
            record["Cancelled"] = cancellation is not None
            record["Active"] = cancellation is None or cancellation > now
            renewal = add_months(midnight(parse_local(record["StartDate"]) or now), 1)
            record["RenewalDate"] = record["NextAutoInvoice"] = local_stamp(renewal)
            if record["PricePlanTermsAccepted"]:
                record["PricePlanTermsAcceptedOn"] = local_stamp(now)
        else:
            product = _related(self.world.time_pass_by_id, record["TimePassId"])
            uses = product.uses if product else 1
            record["TotalUses"] = record["RemainingUses"] = uses
            if record["Price"] is None and product and not record["Free"]:
                record["Price"] = product.price

    def change(self, entity: Entity, record: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        """A realistic edit of an existing record (wire name -> new value)."""
        choice = self._between(0, 2)
        if entity.name == "AccessToken":
            left = record.get("MinutesLeft")
            if choice == 0 and isinstance(left, int) and left > 0:
                return {"MinutesLeft": left - self._between(1, left), "LastAccess": local_stamp(now)}
            if choice == 1:
                valid_to = parse_local(record.get("ValidTo")) or midnight(now)
                return {"ValidTo": local_stamp(valid_to + dt.timedelta(30))}
            name = f"{self._pick(FIRST_NAMES)} {self._pick(LAST_NAMES)}"
            return {"Description": f"{self._pick(TOKEN_KINDS)} — {name}"}
        if entity.name == "CoworkerContract":
            if choice == 0 and not record.get("Cancelled"):
                return {
                    "Cancelled": True,
                    "CancellationDate": local_stamp(midnight(now) + dt.timedelta(30)),
                    "CancellationReason": self._pick(CANCELLATION_REASONS),
                }
            if choice == 1 and isinstance(record.get("Price"), (int, float)):
                return {"Price": round(record["Price"] * 1.05, 2)}
            renewal = parse_local(record.get("RenewalDate")) or midnight(now)
            return {"RenewalDate": local_stamp(add_months(renewal, 1))}
        remaining = record.get("RemainingUses")
        if choice == 0 and isinstance(remaining, int) and remaining > 0:
            return {"RemainingUses": remaining - 1, "Used": remaining == 1, "UsedDate": local_stamp(now)}
        if choice == 1:
            expiry = parse_local(record.get("ExpireDate")) or midnight(now)
            return {"ExpireDate": local_stamp(expiry + dt.timedelta(14))}
        return {"Notes": self._pick(PASS_NOTES)}

    def display(self, entity: Entity, record: dict[str, Any]) -> dict[str, Any]:
        """The flattened display fields a list carries (object wire names), from the relations."""
        world = self.world
        if entity.name == "CoworkerContract":
            coworker = _related(world.coworker_by_id, record.get("CoworkerId"))
            tariff = _related(world.tariff_by_id, record.get("TariffId"))
            next_tariff = _related(world.tariff_by_id, record.get("NextTariffId"))
            issued_by = _related(world.business_by_id, record.get("IssuedById"))
            return {
                "IssuedByName": issued_by.name if issued_by else None,
                "CoworkerFullName": coworker.full_name if coworker else None,
                "CoworkerCompanyName": coworker.company_name if coworker else None,
                "CoworkerBillingName": coworker.billing_name if coworker else None,
                "CoworkerEmail": coworker.email if coworker else None,
                "TariffName": tariff.name if tariff else None,
                "TariffInvoiceEvery": tariff.invoice_every if tariff else None,
                "TariffInvoiceEveryWeeks": tariff.invoice_every_weeks if tariff else None,
                "TariffPrice": tariff.price if tariff else None,
                "TariffCurrency_Code": tariff.business.currency if tariff else None,
                "NextTariffName": next_tariff.name if next_tariff else None,
            }
        if entity.name == "CoworkerTimePass":
            product = _related(world.time_pass_by_id, record.get("TimePassId"))
            coworker = _related(world.coworker_by_id, record.get("CoworkerId"))
            return {
                "TimePassName": product.name if product else None,
                "TimePassCurrency_Code": product.business.currency if product else None,
                "CoworkerFullName": coworker.full_name if coworker else None,
            }
        return {}


#: Per entity, the number a schema-drifted server sends as text, and the unit it appends.
DRIFTED_FIELDS = {
    "AccessToken": ("MinutesLeft", "min"),
    "CoworkerContract": ("Quantity", "seats"),
    "CoworkerTimePass": ("RemainingUses", "uses"),
}


def drift_schema(entity: Entity, record: dict[str, Any]) -> None:
    """The record as a server whose schema changed sends it: `MinutesLeft: "10 min"`."""
    name, unit = DRIFTED_FIELDS[entity.name]
    record[name] = f"{record.get(name) or 0} {unit}"


def _related(records: dict[int, T], record_id: Any) -> T | None:
    # Records edited by tests may point anywhere, or hold something that is not an Id at all.
    return records.get(record_id) if isinstance(record_id, int) else None


def label(entity: Entity, record: dict[str, Any], display: dict[str, Any]) -> str:
    """What answer messages call a record ("Record '<label>' has been ...")."""
    if entity.name == "AccessToken":
        return str(record.get("AccessCode"))
    who = display.get("CoworkerFullName") or record.get("CoworkerId")
    if entity.name == "CoworkerContract":
        return f"{display.get('TariffName') or 'Contract'} for {who}"
    return f"{display.get('TimePassName') or 'Time pass'} for {who}"
