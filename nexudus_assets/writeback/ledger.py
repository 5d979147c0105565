"""The command ledger: every command sent (or that a dry run would send), one row per record.

Commands sent to Nexudus cannot be undone, so the ledger is what stops a second send. Where it
lives follows from that:

- A SQLite file of its own, by default beside the warehouse (`<stem>.ledger.sqlite`, or
  `NEXUDUS_LEDGER_PATH`). Not inside the warehouse: that file is replaced as a whole (a snapshot
  published, a backup restored, a rebuild), and a ledger inside it would vanish with it. Not in
  the Dagster instance: two Dagster instances pointed at the same warehouse and account (a
  deployment and a laptop, an instance being migrated) must see each other's claims; a file they
  both open does that, one instance's storage does not.
- SQLite, because its file locking makes a claim atomic across processes: `BEGIN IMMEDIATE`
  takes the write lock, and a busy timeout makes everyone else wait for it. Machines sharing a
  network volume are the exception, as SQLite's documentation warns: run one Dagster deployment
  per ledger.
- A claim comes before a send. For each call, one transaction checks every record's cooldown and
  attempts and inserts `pending` rows for the eligible ones; only then is the call sent, and the
  row finished with its outcome. A run killed in between leaves `pending`, which, like
  `uncertain`, counts as actioned: a command that may have reached Nexudus is not sent again
  within the cooldown.
- The cooldown key is what is done, not who asked: (entity, record id, command key, parameters).
  Renaming a rule, or two rules with the same command and parameters, do not act twice. The rule
  being run decides how long its window is; any actioned row with the same key inside it blocks.
- Dry runs are recorded (`dry_run`) and never block; neither do `failed` (retried up to
  `max_attempts` within the cooldown), `skipped` and `refused` rows.

- A ledger belongs to one account (base URL and user, never the password): the first write
  records it in table `account`, and a ledger opened for another account refuses every write,
  naming both. The cooldown of one account says nothing about another's records, whose ids may
  be the same numbers.

Back the ledger up with the warehouse. A missing ledger is never replaced silently (the command
job refuses once the Dagster instance holds a live command run); to start afresh on purpose:

    python -m nexudus_assets.writeback.ledger init PATH
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from nexudus_assets.nexudus.account import Account

Outcome = Literal["dry_run", "pending", "succeeded", "failed", "uncertain", "skipped", "refused"]
#: Outcomes after which the record may have changed in Nexudus: it rests for the cooldown.
ACTIONED: tuple[Outcome, ...] = ("pending", "succeeded", "uncertain")

TABLE = "command_runs"
#: Marks the file as a command ledger ("NXCL"), so that no other SQLite file is taken for one.
APPLICATION_ID = 0x4E58434C
FORMAT_VERSION = 1
#: How long a claim waits for another process's transaction; claims last milliseconds.
DEFAULT_BUSY_TIMEOUT = 60.0

_SCHEMA = (
    f"""CREATE TABLE {TABLE} (
        call_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        entity TEXT NOT NULL,
        record_id INTEGER NOT NULL,
        command_key TEXT NOT NULL,
        parameters TEXT NOT NULL,
        dry_run INTEGER NOT NULL CHECK (dry_run IN (0, 1)),
        outcome TEXT NOT NULL CHECK (outcome IN ({", ".join(f"'{o}'" for o in get_args(Outcome))})),
        message TEXT,
        run_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        finished_at TEXT
    )""",
    f"CREATE INDEX {TABLE}_by_key ON {TABLE} (entity, command_key, parameters, record_id, created_at)",
    f"CREATE INDEX {TABLE}_by_call ON {TABLE} (call_id)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {FORMAT_VERSION}",
)


class LedgerError(RuntimeError):
    """The ledger cannot be used as it is; the message says where it is and what to do."""


class LedgerMissingError(LedgerError):
    """The ledger is gone although commands were recorded in one before."""


class LedgerAccountError(LedgerError):
    """The ledger records another account's commands; the message names both accounts."""


#: The account a ledger belongs to: one row, written in the transaction of its first write.
ACCOUNT_TABLE = "account"
_ACCOUNT_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {ACCOUNT_TABLE} "
    "(base_url TEXT NOT NULL, username TEXT NOT NULL, recorded_at TEXT NOT NULL)"
)


def default_ledger_path(warehouse: str | Path) -> Path:
    """`data/nexudus.duckdb` -> `data/nexudus.ledger.sqlite`."""
    warehouse = Path(warehouse)
    return warehouse.with_name(f"{warehouse.stem}.ledger.sqlite")


def canonical_parameters(parameters: Mapping[str, Any]) -> str:
    """The parameters as the cooldown key compares them: a JSON object, keys sorted."""
    return json.dumps(dict(parameters), sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class CooldownKey:
    """What a command does to a record, whichever rule asks for it: the ledger's cooldown compares by it."""

    entity: str
    command_key: str
    #: Canonical JSON of the parameters by name.
    parameters: str

    @classmethod
    def of(cls, entity: str, command_key: str, parameters: Mapping[str, Any]) -> CooldownKey:
        return cls(entity, command_key, canonical_parameters(parameters))


@dataclass(frozen=True)
class LedgerRow:
    call_id: str
    rule: str
    entity: str
    record_id: int
    command_key: str
    parameters: str
    dry_run: bool
    outcome: Outcome
    message: str | None
    run_id: str
    created_at: dt.datetime
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class Claim:
    """What one call may send. `call_id` is None when nothing was claimed."""

    call_id: str | None
    claimed: list[int]
    #: Actioned within the cooldown or out of attempts when the claim was made.
    blocked: list[int]
    #: Eligible, but too few left for the command to take (recorded as `skipped`).
    skipped: list[int]


def _stamp(moment: dt.datetime) -> str:
    # One fixed format, so that text comparison is time comparison.
    return moment.isoformat(sep=" ", timespec="microseconds")


def _moment(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


class CommandLedger:
    """An existing ledger file. Every operation opens its own short-lived connection.

    `account`: the account the commands are for. Every write records it in a ledger that has none,
    and refuses (LedgerAccountError) in a ledger of another account. None only for readers.
    """

    def __init__(
        self, path: str | Path, *, account: Account | None = None, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> None:
        self.path = Path(path)
        self.account = account
        self.busy_timeout = busy_timeout
        if not self.path.is_file():
            raise LedgerMissingError(f"no command ledger at {self.path}")
        with self._connection() as conn:
            self._check_format(conn)

    @classmethod
    def create(
        cls, path: str | Path, *, account: Account | None = None, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> CommandLedger:
        """Creates an empty ledger at `path`, or opens the one already there."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Private from the start: SQLite would create it 0644, and gives its journals the file's mode.
        # An existing ledger keeps the mode its operator gave it.
        with suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        try:
            with closing(sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    fresh = (
                        conn.execute("PRAGMA application_id").fetchone()[0] == 0
                        and not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                    )
                    if fresh:
                        for statement in _SCHEMA:
                            conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise LedgerError(f"the command ledger {path} cannot be created: {exc}") from None
        return cls(path, account=account, busy_timeout=busy_timeout)

    def _check_format(self, conn: sqlite3.Connection) -> None:
        [application_id] = conn.execute("PRAGMA application_id").fetchone()
        [version] = conn.execute("PRAGMA user_version").fetchone()
        if application_id != APPLICATION_ID:
            raise LedgerError(f"{self.path} is not a command ledger (a SQLite file of another kind, or empty)")
        if version != FORMAT_VERSION:
            raise LedgerError(f"the command ledger {self.path} has format {version}; this code reads {FORMAT_VERSION}")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # mode=rw: a ledger deleted while in use is an error, never silently recreated empty.
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None)) as conn:
                yield conn
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise LedgerError(
                    f"the command ledger {self.path} stayed locked by another process for {self.busy_timeout:g} s"
                ) from None
            raise LedgerError(f"the command ledger {self.path} cannot be used: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"the command ledger {self.path} cannot be read: {exc}") from None

    @staticmethod
    def _recorded_account(conn: sqlite3.Connection) -> Account | None:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", [ACCOUNT_TABLE]).fetchone():
            return None
        row = conn.execute(f"SELECT base_url, username FROM {ACCOUNT_TABLE}").fetchone()
        return Account(base_url=row[0], username=row[1]) if row else None

    def _refuse_other_account(self, conn: sqlite3.Connection) -> Account | None:
        recorded = self._recorded_account(conn)
        if self.account is not None and recorded is not None and recorded != self.account:
            raise LedgerAccountError(
                f"the command ledger {self.path} belongs to the Nexudus account {recorded}, and this run is for "
                f"{self.account}; nothing was written or sent. Point NEXUDUS_LEDGER_PATH at that account's "
                "ledger (`make account` makes one per account), or, if the account itself moved, see the "
                'README\'s "Moving a warehouse to another account"'
            )
        return recorded

    def account_recorded(self) -> Account | None:
        """The account the ledger belongs to (None before its first write); LedgerAccountError if not `account`."""
        with self._connection() as conn:
            return self._refuse_other_account(conn)

    def move_to(self, account: Account) -> Account | None:
        """Record `account` in place of the one recorded, in one transaction; returns the one it replaced."""
        with self._write(for_account=False) as conn:
            recorded = self._recorded_account(conn)
            if recorded is not None:
                conn.execute(f"DELETE FROM {ACCOUNT_TABLE}")
            self._record_account(conn, account)
        return recorded

    @staticmethod
    def _record_account(conn: sqlite3.Connection, account: Account) -> None:
        conn.execute(_ACCOUNT_SCHEMA)
        conn.execute(
            f"INSERT INTO {ACCOUNT_TABLE} VALUES (?, ?, ?)",
            [account.base_url, account.username, _stamp(dt.datetime.now(dt.UTC).replace(tzinfo=None))],
        )

    @contextmanager
    def _write(self, *, for_account: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from its first statement: reads in it stay true.

        `for_account`: it begins by recording the ledger's account, or refusing when it is another one."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if for_account and self.account is not None and self._refuse_other_account(conn) is None:
                    self._record_account(conn, self.account)
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _blocked(
        conn: sqlite3.Connection,
        key: CooldownKey,
        *,
        cooldown: dt.timedelta,
        max_attempts: int,
        now: dt.datetime,
        ids: Sequence[int] | None,
    ) -> set[int]:
        only = f"AND record_id IN ({', '.join('?' * len(ids))})" if ids is not None else ""
        actioned = ", ".join(f"'{outcome}'" for outcome in ACTIONED)
        rows = conn.execute(
            f"""SELECT record_id FROM {TABLE}
                WHERE entity = ? AND command_key = ? AND parameters = ? AND dry_run = 0 AND created_at > ? {only}
                GROUP BY record_id
                HAVING sum(outcome IN ({actioned})) > 0 OR sum(outcome = 'failed') >= ?""",
            [key.entity, key.command_key, key.parameters, _stamp(now - cooldown), *(ids or ()), max_attempts],
        ).fetchall()
        return {record_id for (record_id,) in rows}

    def blocked_ids(self, key: CooldownKey, *, cooldown: dt.timedelta, max_attempts: int, now: dt.datetime) -> set[int]:
        """Records to leave alone now: actioned within the cooldown, or out of attempts. A snapshot, not a claim."""
        with self._connection() as conn:
            return self._blocked(conn, key, cooldown=cooldown, max_attempts=max_attempts, now=now, ids=None)

    def blocked_each(
        self, keys: Mapping[int, CooldownKey], *, cooldown: dt.timedelta, max_attempts: int, now: dt.datetime
    ) -> set[int]:
        """Like `blocked_ids`, for records each keyed by its own action (a PUT of its own values)."""
        with self._connection() as conn:
            return {
                record_id
                for record_id, key in keys.items()
                if self._blocked(conn, key, cooldown=cooldown, max_attempts=max_attempts, now=now, ids=[record_id])
            }

    def _insert(
        self,
        conn: sqlite3.Connection,
        key: CooldownKey,
        *,
        call_id: str,
        ids: Sequence[int],
        rule: str,
        run_id: str,
        dry_run: bool,
        outcome: Outcome,
        message: str,
        now: dt.datetime,
    ) -> None:
        finished = None if outcome == "pending" else _stamp(now)
        conn.executemany(
            f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    call_id,
                    rule,
                    key.entity,
                    record_id,
                    key.command_key,
                    key.parameters,
                    int(dry_run),
                    outcome,
                    message,
                    run_id,
                    _stamp(now),
                    finished,
                )
                for record_id in ids
            ],
        )

    def claim(
        self,
        key: CooldownKey,
        ids: Sequence[int],
        *,
        rule: str,
        run_id: str,
        cooldown: dt.timedelta,
        max_attempts: int,
        min_records: int,
        now: dt.datetime,
    ) -> Claim:
        """In one transaction: leave out the blocked records and mark the rest `pending` for one call.

        When fewer than `min_records` are eligible, the command cannot take them: they are
        recorded as `skipped` and nothing is claimed.
        """
        with self._write() as conn:
            blocked = self._blocked(conn, key, cooldown=cooldown, max_attempts=max_attempts, now=now, ids=ids)
            eligible = [record_id for record_id in ids if record_id not in blocked]
            if len(eligible) >= min_records:
                call_id = str(uuid.uuid4())
                self._insert(
                    conn,
                    key,
                    call_id=call_id,
                    ids=eligible,
                    rule=rule,
                    run_id=run_id,
                    dry_run=False,
                    outcome="pending",
                    message="sending",
                    now=now,
                )
                return Claim(call_id, eligible, sorted(blocked), [])
            if eligible:
                self._insert(
                    conn,
                    key,
                    call_id=str(uuid.uuid4()),
                    ids=eligible,
                    rule=rule,
                    run_id=run_id,
                    dry_run=False,
                    outcome="skipped",
                    message=f"{key.command_key} needs {min_records} records; the others were actioned meanwhile",
                    now=now,
                )
            return Claim(None, [], sorted(blocked), eligible)

    def record(
        self,
        key: CooldownKey,
        calls: Sequence[Sequence[int]],
        *,
        rule: str,
        run_id: str,
        dry_run: bool,
        outcome: Outcome,
        message: str,
        now: dt.datetime,
    ) -> list[str]:
        """Rows that claim nothing (dry runs, skipped, refused), one call id per call; one transaction."""
        if outcome in ACTIONED and not dry_run:
            raise ValueError(f"a live {outcome!r} row is a claim: use claim()")
        call_ids = [str(uuid.uuid4()) for _ in calls]
        with self._write() as conn:
            for call_id, ids in zip(call_ids, calls, strict=True):
                self._insert(
                    conn,
                    key,
                    call_id=call_id,
                    ids=ids,
                    rule=rule,
                    run_id=run_id,
                    dry_run=dry_run,
                    outcome=outcome,
                    message=message,
                    now=now,
                )
        return call_ids

    def finish(self, call_id: str, outcome: Outcome, message: str, now: dt.datetime) -> None:
        with self._write() as conn:
            conn.execute(
                f"UPDATE {TABLE} SET outcome = ?, message = ?, finished_at = ?"
                " WHERE call_id = ? AND outcome = 'pending'",
                [outcome, message, _stamp(now), call_id],
            )

    def finish_each(self, call_id: str, outcomes: Mapping[int, Outcome], message: str, now: dt.datetime) -> None:
        """Finish one call whose records came out differently (a batch that failed for some); one transaction."""
        with self._write() as conn:
            conn.executemany(
                f"UPDATE {TABLE} SET outcome = ?, message = ?, finished_at = ?"
                " WHERE call_id = ? AND record_id = ? AND outcome = 'pending'",
                [(outcome, message, _stamp(now), call_id, record_id) for record_id, outcome in outcomes.items()],
            )

    def rows(self) -> list[LedgerRow]:
        """Every row, oldest first."""
        with self._connection() as conn:
            found = conn.execute(f"SELECT * FROM {TABLE} ORDER BY created_at, call_id, record_id").fetchall()
        return [
            LedgerRow(
                call_id,
                rule,
                entity,
                record_id,
                command_key,
                parameters,
                bool(dry_run),
                outcome,
                message,
                run_id,
                _moment(created_at),
                _moment(finished_at) if finished_at is not None else None,
            )
            for (
                call_id,
                rule,
                entity,
                record_id,
                command_key,
                parameters,
                dry_run,
                outcome,
                message,
                run_id,
                created_at,
                finished_at,
            ) in found
        ]


def existing_ledger(
    path: str | Path, *, used_before_by: str | None, account: Account | None = None
) -> CommandLedger | None:
    """The ledger at `path`; None when there is none yet and none is expected.

    `used_before_by` names evidence that commands were recorded in a ledger before (a live
    command run). Then a missing ledger is an error: a new, empty one would send them all again.
    """
    path = Path(path)
    if path.exists():
        return CommandLedger(path, account=account)
    if used_before_by is not None:
        raise LedgerMissingError(
            f"the command ledger is missing: expected at {path}, but {used_before_by} recorded commands in it. "
            "Starting a new one would forget what was sent and send it again, so nothing is sent. "
            f"Restore the ledger from backup to {path}, or set NEXUDUS_LEDGER_PATH to where it is. "
            "To start afresh deliberately, create an empty ledger: "
            f"python -m nexudus_assets.writeback.ledger init {path}"
        )
    return None


def open_ledger(path: str | Path, *, used_before_by: str | None, account: Account | None = None) -> CommandLedger:
    """The ledger at `path`, created when there is none yet (see `existing_ledger`)."""
    return existing_ledger(path, used_before_by=used_before_by, account=account) or CommandLedger.create(
        path, account=account
    )


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "init":
        print("usage: python -m nexudus_assets.writeback.ledger init PATH", file=sys.stderr)
        return 2
    path = Path(argv[1])
    if path.exists():
        print(f"{path} already exists; move it away first if you mean to start afresh", file=sys.stderr)
        return 1
    try:
        CommandLedger.create(path)
    except LedgerError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"created an empty command ledger at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
