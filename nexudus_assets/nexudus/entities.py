"""One description per Nexudus resource: where it lives, how it filters, what it holds.

Shared by the client and the simulator; everything here is taken from the reference pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexudus_assets.nexudus.models import AccessToken, CoworkerContract, CoworkerTimePass, NexudusRecord


@dataclass(frozen=True)
class Entity:
    #: The record type name; also the prefix of its filters (`AccessToken_MinutesLeft`) and roles.
    name: str
    #: Path below the API base (`spaces/accesstokens`).
    path: str
    model: type[NexudusRecord]
    #: Warehouse table and Dagster asset name.
    table: str
    #: Object attributes the reference marks "required" (snake_case).
    required_fields: tuple[str, ...]
    #: Wire names a PUT clears when they are missing from the body.
    put_fields: tuple[str, ...]
    #: Wire names a POST must carry.
    create_required: tuple[str, ...]
    #: The contracts reference documents no DELETE.
    deletable: bool = True

    def filter_name(self, wire_name: str) -> str:
        """`MinutesLeft` -> `AccessToken_MinutesLeft`; relations filter under their bare name."""
        legacy = self.model.legacy_list_names().get(wire_name, wire_name)
        return f"{self.name}_{legacy}"

    def range_names(self, wire_name: str) -> tuple[str, str]:
        return f"from_{self.name}_{wire_name}", f"to_{self.name}_{wire_name}"


ACCESS_TOKENS = Entity(
    name="AccessToken",
    path="spaces/accesstokens",
    model=AccessToken,
    table="access_tokens",
    required_fields=("access_code", "business_id", "minutes_included", "minutes_left", "unique_id"),
    put_fields=(
        "BusinessId",
        "AccessCode",
        "Description",
        "MinutesIncluded",
        "ValidFrom",
        "ValidTo",
        "UserLimit",
        "MacAddress",
        "BookingGuid",
        "VisitorGuid",
    ),
    create_required=("BusinessId", "AccessCode", "MinutesIncluded"),
)

COWORKER_CONTRACTS = Entity(
    name="CoworkerContract",
    path="billing/coworkercontracts",
    model=CoworkerContract,
    table="coworker_contracts",
    required_fields=("billing_day", "coworker_id", "issued_by_id", "quantity", "tariff_id", "unique_id"),
    put_fields=(
        "IssuedById",
        "CoworkerId",
        "TariffId",
        "NextTariffId",
        "Notes",
        "StartDate",
        "BillingDay",
        "RenewalDate",
        "InvoicedPeriod",
        "ContractTerm",
        "Price",
        "Value",
        "Quantity",
        "IncludeSignupFee",
        "InvoiceAdvancedCycles",
        "ApplyProRating",
        "NextAutoInvoice",
        "PricePlanTermsAccepted",
        "CancellationDate",
        "CancellationLimitDays",
        "ProRateCancellation",
        "CancelTeamContracts",
        "CancellationReason",
        "CancellationNotes",
        "ProposalUniqueId",
        "FloorPlanDeskIds",
        "FloorPlanDeskNames",
    ),
    create_required=("IssuedById", "CoworkerId", "TariffId", "BillingDay", "Quantity"),
    deletable=False,
)

COWORKER_TIME_PASSES = Entity(
    name="CoworkerTimePass",
    path="billing/coworkertimepasses",
    model=CoworkerTimePass,
    table="coworker_time_passes",
    # CreateMultiple is a create-time instruction ("create N passes"), not a stored fact.
    required_fields=("business_id", "coworker_id", "time_pass_id", "unique_id"),
    put_fields=(
        "CoworkerId",
        "BusinessId",
        "TimePassId",
        "Notes",
        "Used",
        "Free",
        "Price",
        "ExpireDate",
        "CoworkerProductUniqueId",
    ),
    create_required=("CoworkerId", "BusinessId", "TimePassId", "CreateMultiple"),
)

ENTITIES: tuple[Entity, ...] = (ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES)


def entity_of(path: str) -> Entity | None:
    """The entity whose endpoint `path` (relative to the API base) is, or is under; None for others."""
    bare = path.strip("/").lower()
    for entity in ENTITIES:
        if bare == entity.path or bare.startswith(entity.path + "/"):
            return entity
    return None
