"""Typed Nexudus records, page envelopes and command payloads (pydantic v2).

Records accept every shape the documentation shows: object shape (`BusinessId`,
`TariffName`) and the older list shape (`Business`, `CoworkerContractTariffName`).
Fields are snake_case; the wire names are their aliases. Unknown fields are kept in
`model_extra`, never dropped.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import IntEnum
from typing import Annotated, Any, ClassVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_pascal
from pydantic_core import CoreSchema, core_schema

# CreatedOn/UpdatedOn come as UTC with `Z`; business dates come bare (the location's local
# time). Offsets are converted to UTC; bare values are kept as they are. Two plain validators
# around pydantic's own parsing cost less than one that wraps it.


def _utc_stamp(value: Any) -> Any:
    # The common case, read in one step: every record carries several such stamps. What this
    # cannot read goes on to pydantic, which says what is wrong with it.
    if isinstance(value, str) and value.endswith("Z"):
        try:
            moment = dt.datetime.fromisoformat(value[:-1])
        except ValueError:
            return value
        if moment.tzinfo is None:
            return moment
    return value


def _to_naive_utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is a year before the first one datetime holds: a bad value
        # of this record, not an error of the sync.
        raise ValueError("a date that is out of range once converted to UTC") from None


#: The reference types Ids as `int`, which in the .NET the API is written in is a signed
#: 32-bit integer; Nexudus hands out positive ones.
MAX_ID = 2**31 - 1


def valid_id(value: Any) -> int | None:
    """`value` when it is an Id as documented (a JSON integer from 1 to `MAX_ID`), else None.

    Booleans, floats and numeric strings are refused: `true` must never become record 1.
    """
    if type(value) is int and 1 <= value <= MAX_ID:
        return value
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


class _NullFirst:
    """Takes null as null before the validators listed ahead of it run.

    Most records leave some of these fields empty. Unlike `Annotated[...] | None` it keeps the
    field's annotation a plain `X | None`, which the warehouse and the simulator read the
    column types from.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.nullable_schema(handler(source))


DateTime = Annotated[dt.datetime | None, BeforeValidator(_utc_stamp), AfterValidator(_to_naive_utc), _NullFirst()]
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
    created_on: DateTime = None
    updated_on: DateTime = None
    updated_by: str | None = None

    #: Snake-case names of the flattened display fields (not attributes of the object).
    display_fields: ClassVar[tuple[str, ...]] = ()

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
    minutes_included: int | None = None
    minutes_left: int | None = None
    user_limit: int | None = None
    valid_from: DateTime = None
    valid_to: DateTime = None
    mac_address: str | None = None
    booking_guid: UUID | None = None
    visitor_guid: UUID | None = None


class CoworkerContract(NexudusRecord):
    active: bool | None = None
    apply_pro_rating: bool | None = None
    billing_day: int | None = None
    cancellation_date: DateTime = None
    cancellation_limit_days: int | None = None
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
    quantity: int | None = None
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
    create_multiple: int | None = None
    expire_date: DateTime = None
    free: bool | None = None
    invoiced: bool | None = None
    invoice_date: DateTime = None
    is_from_tariff: bool | None = None
    notes: str | None = None
    price: Decimal | None = None
    remaining_uses: int | None = None
    time_pass_id: RelationId = relation("TimePass")
    total_uses: int | None = None
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
    updated_on: DateTime = None
    updated_by: str | None = None

    @property
    def record_id(self) -> int | None:
        return valid_id(self.value.get("Id")) if isinstance(self.value, dict) else None
