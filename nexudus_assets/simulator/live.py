"""An account that lives: as its clock moves on, members use token minutes, contracts renew, get
cancelled or start, passes are bought and used, each change stamped with a new `UpdatedOn`.

Off unless a rate is given (`--live-changes`, changes per minute of the clock). The changes are
drawn from their own random stream and fall at fixed moments (one every 60 / rate seconds after
the clock's start), so a seed and the clock's readings always give the same account, however
often it is asked. They are applied when the account is next looked at, each stamped with the
moment it fell on: a sync sees what happened since the last one, as with a real account.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nexudus_assets.nexudus.entities import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, Entity
from nexudus_assets.simulator.data import (
    CANCELLATION_REASONS,
    SYSTEM_USERS,
    Generator,
    add_months,
    local_stamp,
    midnight,
    parse_local,
    utc_stamp,
)
from nexudus_assets.simulator.store import Table

Clock = Callable[[], dt.datetime]

#: What happens, and how often relative to the others: token use is what forecasts need most.
KINDS = (
    ("token_used", 8),
    ("token_topped_up", 1),
    ("contract_renewed", 3),
    ("contract_cancelled", 1),
    ("contract_started", 1),
    ("pass_used", 3),
    ("pass_bought", 1),
)
#: Each use takes this share of the token's included minutes, at least one: some run low within hours.
USE_SHARE = (0.02, 0.15)
#: Members come back: most token use falls on this many tokens at a time.
BUSY_TOKENS = 40


@dataclass(frozen=True)
class LiveChanges:
    """`per_minute` changes per minute of `clock` (naive UTC); 0 or less: the account stands still."""

    per_minute: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0


class LiveAccount:
    """Applies the changes due by the clock's reading; the caller holds the simulator's lock."""

    def __init__(
        self,
        changes: LiveChanges,
        clock: Clock,
        seed: int,
        generator: Generator,
        tables: Mapping[Entity, Table],
        next_id: Callable[[Table], int],
    ) -> None:
        """`generator` makes the records that start; `next_id` gives each its Id."""
        self.changes = changes
        self.clock = clock
        self.started_at = clock()
        self.applied = 0
        self._rng = random.Random(f"{seed}:live")
        self._generator = generator
        self._tokens, self._contracts, self._passes = (
            tables[ACCESS_TOKENS],
            tables[COWORKER_CONTRACTS],
            tables[COWORKER_TIME_PASSES],
        )
        self._next_id = next_id
        self._actions: dict[str, Callable[[dt.datetime], bool]] = {
            "token_used": self._token_used,
            "token_topped_up": self._token_topped_up,
            "contract_renewed": self._contract_renewed,
            "contract_cancelled": self._contract_cancelled,
            "contract_started": self._contract_started,
            "pass_used": self._pass_used,
            "pass_bought": self._pass_bought,
        }
        self._kinds = [kind for kind, _ in KINDS]
        self._weights = [weight for _, weight in KINDS]
        self._busy: list[int] = []
        #: Each kind's count so far, for tests and the process's log.
        self.counts: dict[str, int] = dict.fromkeys(self._kinds, 0)

    def due(self, now: dt.datetime) -> int:
        """How many changes have fallen by `now`."""
        if not self.changes.enabled or now <= self.started_at:
            return 0
        return int((now - self.started_at).total_seconds() * self.changes.per_minute / 60)

    def catch_up(self) -> int:
        """Apply every change due and not yet applied; returns how many."""
        due = self.due(self.clock())
        step = dt.timedelta(seconds=60 / self.changes.per_minute) if self.changes.enabled else dt.timedelta()
        done = 0
        while self.applied < due:
            self.applied += 1
            moment = (self.started_at + step * self.applied).replace(microsecond=0)
            kind = self._rng.choices(self._kinds, self._weights)[0]
            if self._actions[kind](moment):
                self.counts[kind] += 1
                done += 1
        return done

    # Each change returns whether it found a record to act on; when none fits, the moment passes quietly.

    def _stamp(self, table: Table, record: dict[str, Any], moment: dt.datetime, changes: dict[str, Any]) -> None:
        record.update(changes, UpdatedOn=utc_stamp(moment), UpdatedBy=self._rng.choice(SYSTEM_USERS))
        table.changed((record["Id"],))

    def _pick(self, table: Table, fits: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """A random record that fits, looked for among a bounded sample so a large account stays quick."""
        keys = [key for key in table.ordered_keys() if key not in table.raw]
        for key in self._rng.sample(keys, min(len(keys), 200)):
            if fits(table[key]):
                return table[key]
        return None

    def _token_used(self, moment: dt.datetime) -> bool:
        table = self._tokens

        def usable(record: dict[str, Any]) -> bool:
            valid_from, valid_to = parse_local(record.get("ValidFrom")), parse_local(record.get("ValidTo"))
            left = record.get("MinutesLeft")
            return (
                isinstance(left, int)
                and left > 0
                and (valid_from is None or valid_from <= moment)
                and (valid_to is None or valid_to > moment)
            )

        self._busy = [key for key in self._busy if key in table and usable(table[key])]
        while len(self._busy) < BUSY_TOKENS:
            found = self._pick(table, lambda record: usable(record) and record["Id"] not in self._busy)
            if found is None:
                break
            self._busy.append(found["Id"])
        if not self._busy:
            return False
        record = table[self._rng.choice(self._busy)]
        included = record.get("MinutesIncluded")
        share = self._rng.uniform(*USE_SHARE)
        used = max(1, int((included if isinstance(included, int) else record["MinutesLeft"]) * share))
        left = max(0, record["MinutesLeft"] - used)
        self._stamp(table, record, moment, {"MinutesLeft": left, "LastAccess": local_stamp(moment)})
        return True

    def _token_topped_up(self, moment: dt.datetime) -> bool:
        table = self._tokens
        record = self._pick(
            table,
            lambda r: isinstance(r.get("MinutesIncluded"), int) and r.get("MinutesLeft") == 0,
        )
        if record is None:
            return False
        self._stamp(table, record, moment, {"MinutesLeft": record["MinutesIncluded"]})
        return True

    def _contract_renewed(self, moment: dt.datetime) -> bool:
        table = self._contracts
        record = self._pick(table, _running_contract)
        if record is None:
            return False
        renewal = parse_local(record.get("RenewalDate")) or midnight(moment)
        following = add_months(renewal, 1)
        self._stamp(
            table,
            record,
            moment,
            {
                "RenewalDate": local_stamp(following),
                "InvoicedPeriod": local_stamp(renewal),
                "NextAutoInvoice": local_stamp(following),
            },
        )
        return True

    def _contract_cancelled(self, moment: dt.datetime) -> bool:
        table = self._contracts
        record = self._pick(table, _running_contract)
        if record is None:
            return False
        # Notice runs from today to a month ahead; a contract ends on its cancellation date.
        cancellation = midnight(moment) + dt.timedelta(days=self._rng.randint(0, 30))
        self._stamp(
            table,
            record,
            moment,
            {
                "Cancelled": True,
                "Active": cancellation > moment,
                "CancellationDate": local_stamp(cancellation),
                "CancellationReason": self._rng.choice(CANCELLATION_REASONS),
            },
        )
        return True

    def _contract_started(self, moment: dt.datetime) -> bool:
        table = self._contracts
        record_id = self._next_id(table)
        record = self._generator.record(COWORKER_CONTRACTS, record_id, moment, moment, moment)
        start = midnight(moment)
        renewal = add_months(start, 1)
        record.update(
            Active=True,
            Cancelled=False,
            CancellationDate=None,
            CancellationReason=None,
            CancellationNotes=None,
            StartDate=local_stamp(start),
            RenewalDate=local_stamp(renewal),
            NextAutoInvoice=local_stamp(renewal),
            InvoicedPeriod=local_stamp(start),
        )
        table.add(record_id, record)
        return True

    def _pass_used(self, moment: dt.datetime) -> bool:
        table = self._passes

        def usable(record: dict[str, Any]) -> bool:
            remaining, expiry = record.get("RemainingUses"), parse_local(record.get("ExpireDate"))
            return isinstance(remaining, int) and remaining > 0 and (expiry is None or expiry > moment)

        record = self._pick(table, usable)
        if record is None:
            return False
        remaining = record["RemainingUses"] - 1
        self._stamp(
            table,
            record,
            moment,
            {"RemainingUses": remaining, "Used": remaining == 0, "UsedDate": local_stamp(moment), "CheckedIn": True},
        )
        return True

    def _pass_bought(self, moment: dt.datetime) -> bool:
        table = self._passes
        record_id = self._next_id(table)
        record = self._generator.record(COWORKER_TIME_PASSES, record_id, moment, moment, moment)
        total = record["TotalUses"]
        # Bought to be used soon: it expires within two weeks, so some expire unused.
        expiry = midnight(moment) + dt.timedelta(days=self._rng.randint(1, 14))
        record.update(
            RemainingUses=total,
            Used=False,
            UsedDate=None,
            CheckedIn=False,
            ExpireDate=local_stamp(expiry),
        )
        table.add(record_id, record)
        return True


def _running_contract(record: dict[str, Any]) -> bool:
    """Active and not cancelled: one that can still renew or be cancelled."""
    return bool(record.get("Active")) and not record.get("Cancelled")
