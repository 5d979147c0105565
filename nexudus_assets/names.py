"""What one account's definitions are called in the Dagster instance, and how its steps reach its resources.

Asset keys, job, sensor, schedule, group and op names, resource keys and the alert cursor are
global in an instance: with several accounts each carries the account's name, so that nothing of
one account can trigger, alert for or stand as evidence about another. The account of a
deployment without an accounts file keeps the plain names.
"""

import re
from dataclasses import dataclass
from typing import Any

import dagster as dg

from nexudus_assets.resources import (
    AlertWebhookResource,
    CommandLedgerResource,
    NexudusApiResource,
    WarehouseResource,
)

#: On every run of an account's jobs: the instance's run queue lets one run per account go at a time.
ACCOUNT_TAG = "nexudus/account"
#: The tag's value for the one account of a deployment without an accounts file.
SINGLE_ACCOUNT = "default"
#: An account's name: the first part of its asset keys and of its jobs', sensors' and resources' names.
ACCOUNT_NAME = re.compile(r"[a-z](?:_?[a-z0-9])*")
ACCOUNT_NAME_MAX = 40
#: The resources every account has, by their plain keys.
API, WAREHOUSE, LEDGER, ALERTS = "nexudus_api", "warehouse", "ledger", "alerts"


@dataclass(frozen=True)
class AccountNames:
    """`account` None: the one account of a deployment without an accounts file, under the plain names."""

    account: str | None = None

    def __post_init__(self) -> None:
        if self.account is not None and not (
            len(self.account) <= ACCOUNT_NAME_MAX and ACCOUNT_NAME.fullmatch(self.account)
        ):
            raise ValueError(
                f"account name {self.account!r}: lower-case letters, digits and single underscores,"
                f" starting with a letter, at most {ACCOUNT_NAME_MAX} characters"
            )

    def name(self, base: str) -> str:
        """A job's, sensor's, schedule's, group's, op's or resource's name for this account."""
        return f"{self.account}__{base}" if self.account else base

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([*self.key_prefix, name])

    @property
    def key_prefix(self) -> list[str]:
        return [self.account] if self.account else []

    @property
    def tags(self) -> dict[str, str]:
        return {ACCOUNT_TAG: self.account or SINGLE_ACCOUNT}

    def alert(self, text: str) -> str:
        """An alert's text, naming the account when the deployment has several."""
        return f"[{self.account}] {text}" if self.account else text

    def resource_keys(self, *bases: str) -> set[str]:
        return {self.name(base) for base in bases}

    def api(self, context: Any) -> NexudusApiResource:
        resource: NexudusApiResource = getattr(context.resources, self.name(API))
        return resource

    def warehouse(self, context: Any) -> WarehouseResource:
        resource: WarehouseResource = getattr(context.resources, self.name(WAREHOUSE))
        return resource

    def ledger(self, context: Any) -> CommandLedgerResource:
        resource: CommandLedgerResource = getattr(context.resources, self.name(LEDGER))
        return resource

    def alerts(self, context: Any) -> AlertWebhookResource:
        resource: AlertWebhookResource = getattr(context.resources, self.name(ALERTS))
        return resource


#: The names of the one account of a deployment without an accounts file.
PLAIN_NAMES = AccountNames()
