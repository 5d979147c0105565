"""Typed Nexudus records, page envelopes and command payloads (pydantic v2).

Records accept every shape the documentation shows: object shape (`BusinessId`,
`TariffName`) and the older list shape (`Business`, `CoworkerContractTariffName`).
Fields are snake_case; the wire names are their aliases. Unknown fields are kept in
`model_extra`, never dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from enum import IntEnum
from typing import Annotated, Any, ClassVar
from uuid import UUID

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.alias_generators import to_pascal
from pydantic_core import CoreSchema, core_schema

# `CreatedOn`/`UpdatedOn` are instants: they come in UTC (`Z`, sometimes an offset) and are
# stored as naive UTC. Every other date is the operator's wall time: business dates come bare
# (the location's local time) or, in live accounts, as midnight with a `Z` that means nothing
# about the zone. Their offset is dropped, never converted, so `2025-04-01T00:00:00+01:00` and
# `2025-04-01T00:00:00Z` both stay 1 April 00:00. The docs give no zone for the other stamps
# (`LastAccess`, `UsedDate`, `PricePlanTermsAcceptedOn`, ...) and show them bare like the
# business dates, so they are wall time too: one clock per column, whatever a server appends.
# Fractions carry up to 7 digits (.NET ticks); `fromisoformat` keeps 6 and truncates the 7th,
# the same way for every field.


def _to_naive_utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is a year before the first one datetime holds: a bad value
        # of this record, not an error of the sync.
        raise ValueError("a date that is out of range once converted to UTC") from None


def _wall_time(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=None)


def _stamp(normalised: Callable[[dt.datetime], dt.datetime]) -> WrapValidator:
    """Reads a stamp with `fromisoformat` and hands the datetime to `normalised`, in one call.

    What `fromisoformat` cannot read goes on to pydantic, which parses it or says what is
    wrong with it. One wrap validator rather than a before and an after one: a record has up
    to a dozen dates, and every call of a Python validator costs as much as pydantic's own work.
    """

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> dt.datetime:
        if type(value) is str:
            try:
                moment = dt.datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                # Both normalisations leave a naive datetime as it is: most dates come bare.
                return moment if moment.tzinfo is None else normalised(moment)
        return normalised(handler(value))

    return WrapValidator(validate)


#: Nexudus types Ids as `long` (a signed 64-bit integer) and hands out positive ones. They
#: come in interleaved blocks: a higher Id is not a newer record.
MAX_ID = 2**63 - 1


def valid_id(value: Any) -> int | None:
    """`value` when it is an Id as Nexudus has them (a JSON integer from 1 to `MAX_ID`), else None.

    Booleans, floats and numeric strings are refused: `true` must never become record 1.
    """
    if type(value) is int and 1 <= value <= MAX_ID:
        return value
    return None


def stored_version(raw: Any) -> tuple[int, dt.datetime] | None:
    """A raw record's Id and `UpdatedOn` exactly as its model will read them, without validating it.

    None when either is missing or takes more than the common path to read (an unusual date
    form, an Id that is not one): such a record is validated like any other.
    """
    if not isinstance(raw, dict):
        return None
    record_id, stamp = valid_id(raw.get("Id")), raw.get("UpdatedOn")
    if record_id is None or type(stamp) is not str:
        return None
    try:
        moment = dt.datetime.fromisoformat(stamp)
        return record_id, (moment if moment.tzinfo is None else _to_naive_utc(moment))
    except ValueError:
        return None


def _relation_id(value: Any) -> Any:
    if type(value) is int and 1 <= value <= MAX_ID:
        return value  # the common case, as `valid_id` would take it, without the call
    # Some answers embed the related record instead of its Id.
    if isinstance(value, dict) and "Id" in value:
        value = value["Id"]
    if value is None or valid_id(value) is not None:
        return value
    raise ValueError(f"a related record's Id must be a whole number from 1 to {MAX_ID}")


def _not_a_boolean(value: Any) -> Any:
    # pydantic's lax int parsing takes `true` as 1; a count that says `true` is not a count.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a whole number")
    return value


class UnstorableText(ValueError):
    """A record holds strings no UTF-8 text can hold; `problems` names each field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {problem}" for field, problem in problems))


def text_problems(value: Any, path: str) -> list[tuple[str, str]]:
    """(field path, problem) for each string in `value` no UTF-8 text can hold.

    .NET cuts strings between the halves of an emoji and sends the lone half as an escape
    (`"\\ud83d"`); an answer's invalid UTF-8 bytes reach the records as lone surrogates too
    (the client decodes them with `surrogateescape`). DuckDB stores neither. NUL characters
    are valid text and are stored as they are.
    """
    if isinstance(value, str):
        if value.isascii():
            return []
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            code = ord(value[error.start])
            if 0xDC80 <= code <= 0xDCFF:
                return [(path, f"an invalid UTF-8 byte (0x{code - 0xDC00:02x}) at character {error.start}")]
            return [(path, f"a lone UTF-16 surrogate (\\u{code:04x}) at character {error.start}")]
        return []
    if isinstance(value, dict):
        return [problem for key, item in value.items() for problem in text_problems(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [problem for at, item in enumerate(value) for problem in text_problems(item, f"{path}.{at}")]
    return []


class _NullFirst:
    """Takes null as null before the validators listed ahead of it run.

    Most records leave some of these fields empty. Unlike `Annotated[...] | None` it keeps the
    field's annotation a plain `X | None`, which the warehouse and the simulator read the
    column types from.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.nullable_schema(handler(source))


#: An instant, stored as naive UTC: `CreatedOn`, `UpdatedOn`.
Instant = Annotated[dt.datetime | None, _stamp(_to_naive_utc), _NullFirst()]
#: A date as the operator sees it: its calendar date and wall time, any offset dropped.
DateTime = Annotated[dt.datetime | None, _stamp(_wall_time), _NullFirst()]
#: A count: a JSON integer (or its text), never a boolean.
WholeNumber = Annotated[int | None, BeforeValidator(_not_a_boolean), _NullFirst()]
#: Validated before pydantic's own (lax) int parsing, which would turn `true` into 1.
RelationId = Annotated[int | None, BeforeValidator(_relation_id), _NullFirst()]


class CancellationReason(IntEnum):
    """`eCancellationReason`, spelled as published. Unknown values are accepted."""

    PriceTooHigh = 1
    NewJobRelocation = 2
    MovedToOtherSpace = 3
    ChangeWorkEnvironment = 4
    LackCommunityInterations = 5
    PoorSpaceCondition = 6
    OtherMembers = 7
    Rellocated = 8
    BusinessExpansion = 9
    Pause = 10
    Renewed = 11
    Upgraded = 12
    Downgraded = 13
    Covid19 = 19
    Other = 99

    @classmethod
    def _missing_(cls, value: object) -> CancellationReason | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"Unknown{value}"
        member._value_ = value
        return member


def relation(name: str) -> Any:
    """A reference to another record: `<name>Id` in the object shape, `<name>` in older lists."""
    return Field(
        default=None,
        validation_alias=AliasChoices(f"{name}Id", name),
        serialization_alias=f"{name}Id",
    )


def display(entity: str, name: str, *also: str) -> Any:
    """A flattened display field a list carries: `<name>` newer, `<entity><name>` older."""
    return Field(
        default=None,
        validation_alias=AliasChoices(name, f"{entity}{name}", *also),
        serialization_alias=name,
    )


class NexudusModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_pascal,
        populate_by_name=True,
        extra="allow",
        coerce_numbers_to_str=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_strings_are_null(cls, data: Any) -> Any:
        if isinstance(data, dict) and "" in data.values():
            return {key: (None if value == "" else value) for key, value in data.items()}
        return data


class NexudusRecord(NexudusModel):
    """Fields every record carries."""

    id: int = Field(strict=True, ge=1, le=MAX_ID)
    unique_id: UUID | None = None
    system_id: str | None = None
    created_on: Instant = None
    updated_on: Instant = None
    updated_by: str | None = None

    #: Snake-case names of the flattened display fields (not attributes of the object).
    display_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        if isinstance(data, dict):
            problems = []
            for key, value in data.items():
                kind = type(value)
                # Most values are ASCII text, numbers or null: settled here without a call.
                if (kind is str and value.isascii()) or (kind is not str and kind is not dict and kind is not list):
                    continue
                problems.extend(text_problems(value, str(key)))
            if problems:
                raise UnstorableText(problems)
        return data

    @classmethod
    def wire_names(cls) -> dict[str, str]:
        """Field name -> object-shape wire name (`business_id` -> `BusinessId`)."""
        return {name: field.serialization_alias or field.alias or name for name, field in cls.model_fields.items()}

    @classmethod
    def legacy_list_names(cls) -> dict[str, str]:
        """Object-shape wire name -> the name older list answers use (`BusinessId` -> `Business`)."""
        names = {}
        for field in cls.model_fields.values():
            choices = getattr(field.validation_alias, "choices", None)
            if choices and len(choices) > 1:
                names[choices[0]] = choices[1]
        return names


class AccessToken(NexudusRecord):
    access_code: str | None = None
    business_id: RelationId = relation("Business")
    description: str | None = None
    last_access: DateTime = None
    minutes_included: WholeNumber = None
    minutes_left: WholeNumber = None
    user_limit: WholeNumber = None
    valid_from: DateTime = None
    valid_to: DateTime = None
    mac_address: str | None = None
    booking_guid: UUID | None = None
    visitor_guid: UUID | None = None


class CoworkerContract(NexudusRecord):
    active: bool | None = None
    apply_pro_rating: bool | None = None
    billing_day: WholeNumber = None
    cancellation_date: DateTime = None
    cancellation_limit_days: WholeNumber = None
    cancellation_notes: str | None = None
    cancellation_reason: CancellationReason | None = None
    cancelled: bool | None = None
    cancel_team_contracts: bool | None = None
    contract_term: DateTime = None
    coworker_id: RelationId = relation("Coworker")
    floor_plan_desk_ids: str | None = None
    floor_plan_desk_names: str | None = None
    include_signup_fee: bool | None = None
    invoice_advanced_cycles: bool | None = None
    invoiced_period: DateTime = None
    issued_by_id: RelationId = relation("IssuedBy")
    main_contract: bool | None = None
    next_auto_invoice: DateTime = None
    next_tariff_id: RelationId = relation("NextTariff")
    notes: str | None = None
    price: Decimal | None = None
    price_plan_terms_accepted: bool | None = None
    price_plan_terms_accepted_on: DateTime = None
    proposal_unique_id: UUID | None = None
    pro_rate_cancellation: bool | None = None
    quantity: WholeNumber = None
    renewal_date: DateTime = None
    start_date: DateTime = None
    tariff_id: RelationId = relation("Tariff")
    value: Decimal | None = None

    issued_by_name: str | None = display("CoworkerContract", "IssuedByName")
    coworker_full_name: str | None = display("CoworkerContract", "CoworkerFullName")
    coworker_company_name: str | None = display("CoworkerContract", "CoworkerCompanyName")
    coworker_billing_name: str | None = display("CoworkerContract", "CoworkerBillingName")
    coworker_email: str | None = display("CoworkerContract", "CoworkerEmail")
    tariff_name: str | None = display("CoworkerContract", "TariffName")
    tariff_invoice_every: str | None = display("CoworkerContract", "TariffInvoiceEvery")
    tariff_invoice_every_weeks: str | None = display("CoworkerContract", "TariffInvoiceEveryWeeks")
    tariff_price: str | None = display("CoworkerContract", "TariffPrice")
    tariff_currency_code: str | None = display("CoworkerContract", "TariffCurrency_Code", "TariffCurrencyCode")
    next_tariff_name: str | None = display("CoworkerContract", "NextTariffName")

    display_fields: ClassVar[tuple[str, ...]] = (
        "issued_by_name",
        "coworker_full_name",
        "coworker_company_name",
        "coworker_billing_name",
        "coworker_email",
        "tariff_name",
        "tariff_invoice_every",
        "tariff_invoice_every_weeks",
        "tariff_price",
        "tariff_currency_code",
        "next_tariff_name",
    )


class CoworkerTimePass(NexudusRecord):
    business_id: RelationId = relation("Business")
    checked_in: bool | None = None
    coworker_id: RelationId = relation("Coworker")
    coworker_product_unique_id: UUID | None = None
    create_multiple: WholeNumber = None
    expire_date: DateTime = None
    free: bool | None = None
    invoiced: bool | None = None
    invoice_date: DateTime = None
    is_from_tariff: bool | None = None
    notes: str | None = None
    price: Decimal | None = None
    remaining_uses: WholeNumber = None
    time_pass_id: RelationId = relation("TimePass")
    total_uses: WholeNumber = None
    used: bool | None = None
    used_date: DateTime = None

    time_pass_name: str | None = display("CoworkerTimePass", "TimePassName")
    time_pass_currency_code: str | None = display("CoworkerTimePass", "TimePassCurrency_Code", "TimePassCurrencyCode")
    coworker_full_name: str | None = display("CoworkerTimePass", "CoworkerFullName")

    display_fields: ClassVar[tuple[str, ...]] = (
        "time_pass_name",
        "time_pass_currency_code",
        "coworker_full_name",
    )


class Page(NexudusModel):
    """The list envelope. Records stay raw so that one bad record cannot sink a page.

    Each is taken as it came, whatever its JSON type: record validation refuses what is not
    an object, as that one record's error.
    """

    records: Annotated[list[Any], BeforeValidator(lambda value: [] if value is None else value)]
    current_page: int | None = Field(default=None, validation_alias=AliasChoices("CurrentPage", "PageNumber"))
    current_page_size: int | None = Field(default=None, validation_alias=AliasChoices("CurrentPageSize", "PageSize"))
    total_items: int | None = None
    total_pages: int | None = None
    has_next_page: bool | None = None
    has_previous_page: bool | None = None
    first_item: int | None = None
    last_item: int | None = None
    current_order_field: str | None = None
    current_sort_direction: str | None = None


class FieldError(NexudusModel):
    attempted_value: Any = None
    message: str | None = None
    property_name: str | None = None


class CommandParameter(NexudusModel):
    name: str
    #: None when the catalogue gives `Type: null`; its value is then checked against the type a rule declares.
    type: str | None = None


class CommandDescription(NexudusModel):
    key: str
    name: str | None = None
    applies_only_to_multiple_entities: bool = False
    applies_only_to_one_entity: bool = False
    applies_only_to_two_entities: bool = False
    needs_entities_to_run: bool = True
    order: int | None = None
    requires_parameters: list[CommandParameter] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _null_parameters_are_none(cls, data: Any) -> Any:
        if isinstance(data, dict) and "RequiresParameters" in data and data["RequiresParameters"] is None:
            data = {**data, "RequiresParameters": []}
        return data


class ActionResult(NexudusModel):
    """What writes and commands answer: only `was_successful` tells whether they worked."""

    status: int | None = None
    message: str | None = None
    value: Any = None
    was_successful: bool = False
    errors: list[FieldError] | None = None
    updated_on: Instant = None
    updated_by: str | None = None

    @property
    def record_id(self) -> int | None:
        return valid_id(self.value.get("Id")) if isinstance(self.value, dict) else None
