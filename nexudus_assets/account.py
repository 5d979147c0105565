"""A real account's own place, and what its user may do: `make account` (`python -m nexudus_assets.account`).

Run with the account's NEXUDUS_* variables set. It checks the credentials and the roles each job
needs with read-only requests (one page of each entity, one record of each by Id, each command
catalogue), makes `accounts/<name>/` (private: 0700) with a Dagster instance, a warehouse and a
ledger path of its own, and prints what it found and the exact environment to use. The password
is never printed or written.

`move` records another account in a warehouse and its ledger on purpose (the account's base URL
changed); every other write to them refuses an account that is not the one recorded.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb

from nexudus_assets.nexudus import (
    ENTITIES,
    AuthenticationError,
    Entity,
    NexudusClient,
    NexudusError,
    SignInRefusedError,
)
from nexudus_assets.nexudus.account import Account
from nexudus_assets.nexudus.auth import required_role
from nexudus_assets.nexudus.models import valid_id
from nexudus_assets.settings import Settings, SettingsError, account_credentials
from nexudus_assets.warehouse import WarehouseError, WarehouseFiles
from nexudus_assets.warehouse.bookkeeping import WarehouseAccountError, move_to_account, warehouse_account
from nexudus_assets.writeback.ledger import CommandLedger, LedgerError, default_ledger_path

PROJECT = Path(__file__).resolve().parent.parent
#: Where each account's instance, warehouse and ledger live (git-ignored).
ACCOUNTS = PROJECT / "accounts"
_PRIVATE_DIRECTORY = 0o700

Outcome = Literal["ok", "refused", "failed", "not tried"]


@dataclass(frozen=True)
class Probe:
    """One read-only request and how it went."""

    #: `list`, `read` (one record by Id) or `catalogue`.
    kind: str
    entity: Entity
    role: str
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class AccountCheck:
    account: Account
    #: As given (the account compares it in any case).
    username: str
    probes: tuple[Probe, ...]
    #: Set when the credentials themselves were refused: nothing else could be tried.
    sign_in_refused: str | None = None


def _role(kind: str, entity: Entity) -> str:
    method_path = {"list": entity.path, "read": f"{entity.path}/1", "catalogue": f"{entity.path}/commands"}[kind]
    return required_role("GET", method_path) or "a role for this endpoint"


def _probe(kind: str, entity: Entity, request: Callable[[], str]) -> Probe:
    try:
        detail = request()
    except SignInRefusedError:
        raise
    except AuthenticationError as refused:
        status = f"HTTP {refused.status_code}" if refused.status_code is not None else "no status"
        return Probe(kind, entity, _role(kind, entity), "refused", f"refused ({status})")
    except NexudusError as failed:
        return Probe(kind, entity, _role(kind, entity), "failed", str(failed))
    return Probe(kind, entity, _role(kind, entity), "ok", detail)


def _first_id(records: Sequence[object]) -> list[int]:
    """The Id of the first record of a page, as a list of none or one."""
    found = [valid_id(raw.get("Id")) for raw in records[:1] if isinstance(raw, dict)]
    return [record_id for record_id in found if record_id is not None]


def _check_entity(client: NexudusClient, entity: Entity) -> list[Probe]:
    first: list[int] = []

    def list_one() -> str:
        page = client.list_page(entity, size=1)
        first.extend(_first_id(page.records))
        if page.total_items is not None:
            return f"{page.total_items} record(s)"
        return f"{len(page.records)} record(s) on page 1"

    def read_one() -> str:
        return f"record {client.get(entity, first[0]).id}"

    def catalogue() -> str:
        return f"{len(client.commands(entity))} command(s)"

    listed = _probe("list", entity, list_one)
    if first:
        read = _probe("read", entity, read_one)
    else:
        why = "no record listed to read" if listed.outcome == "ok" else "the list did not answer"
        read = Probe("read", entity, _role("read", entity), "not tried", why)
    return [listed, read, _probe("catalogue", entity, catalogue)]


def check_account(client: NexudusClient) -> AccountCheck:
    """Read-only requests: per entity one list page of one record, that record by Id, and the command catalogue."""
    account = Account.of(client.base_url, client.username)
    probes: list[Probe] = []
    try:
        for entity in ENTITIES:
            probes.extend(_check_entity(client, entity))
    except SignInRefusedError as refused:
        return AccountCheck(account, client.username, tuple(probes), sign_in_refused=str(refused))
    return AccountCheck(account, client.username, tuple(probes))


def job_verdicts(check: AccountCheck) -> dict[str, str]:
    """What the roles found mean for each job and for write-back, in words."""

    def refused(*kinds: str) -> list[str]:
        roles = [p.role for p in check.probes if p.kind in kinds and p.outcome in ("refused", "failed")]
        return list(dict.fromkeys(roles))

    def fails(roles: list[str]) -> str:
        return f"fails without {', '.join(roles)}; the rest of it runs" if roles else "can run"

    lists, catalogues = refused("list"), refused("catalogue")
    # A read not tried (its list refused, or empty) has not shown the role either.
    unread = [p.role for p in check.probes if p.kind == "read" and p.outcome != "ok"]
    command = (
        f"cannot check rules for {', '.join(catalogues)}: it reads the catalogue before it sends"
        if catalogues
        else "reads the catalogues; sending needs <Entity>-Edit, which only a live command shows"
    )
    update = (
        f"update rules read each record before their PUT, not shown for {', '.join(unread)}"
        if unread
        else "update rules can read records before their PUT"
    )
    return {
        "nexudus_sync": fails(lists),
        "nexudus_full_refresh (with the command catalogue)": fails(refused("list", "catalogue")),
        "nexudus_command": f"{command}; {update}",
        "nexudus_freshness, nexudus_account_metrics": "call no API",
    }


def default_name(username: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", username.casefold()).strip("-") or "account"


@dataclass(frozen=True)
class AccountPlace:
    """An account's own files under `accounts/<name>/`."""

    root: Path

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def ledger(self) -> Path:
        return default_ledger_path(self.warehouse)

    def make(self, instance_settings: Path) -> None:
        """The directories (0700) and the instance's dagster.yaml, a link to the project's."""
        for directory in (self.root.parent, self.root, self.dagster_home):
            directory.mkdir(mode=_PRIVATE_DIRECTORY, exist_ok=True)
        self.root.chmod(_PRIVATE_DIRECTORY)
        link = self.dagster_home / "dagster.yaml"
        if not link.exists():
            link.symlink_to(os.path.relpath(instance_settings, self.dagster_home))

    def environment(self, settings: Settings, username: str) -> dict[str, str]:
        """The variables the account's runs need; the password and TOTP secret stay in the caller's shell."""
        api = settings.nexudus_api
        return {
            "DAGSTER_HOME": str(self.dagster_home),
            "NEXUDUS_BASE_URL": api.base_url,
            "NEXUDUS_USERNAME": username,
            "NEXUDUS_AUTH": api.auth,
            **({"NEXUDUS_CLIENT_ID": api.client_id} if api.client_id else {}),
            "NEXUDUS_DUCKDB_PATH": str(self.warehouse),
            "NEXUDUS_LEDGER_PATH": str(self.ledger),
        }


def _belongs_to(place: AccountPlace, account: Account) -> list[str]:
    """Problems with files already there: a warehouse or a ledger of another account."""
    problems = []
    if place.warehouse.exists():
        try:
            with WarehouseFiles(place.warehouse).read_published() as conn:
                recorded = warehouse_account(conn)
        except (duckdb.Error, WarehouseError) as exc:
            problems.append(f"the warehouse {place.warehouse} cannot be read: {exc}")
        else:
            if recorded is not None and recorded != account:
                problems.append(f"the warehouse {place.warehouse} belongs to {recorded}")
    if place.ledger.exists():
        try:
            CommandLedger(place.ledger, account=account).account_recorded()
        except LedgerError as exc:
            problems.append(str(exc))
    return problems


def print_check(check: AccountCheck, place: AccountPlace, settings: Settings, out: Callable[[str], None]) -> int:
    """Print what the check found; 0 when every job can run, 1 when some cannot, 2 when the credentials failed."""
    out(f"Account: {check.account}")
    if check.sign_in_refused is not None:
        out(f"  The credentials were refused: {check.sign_in_refused}")
        out("  Check NEXUDUS_USERNAME and NEXUDUS_PASSWORD (and NEXUDUS_TOTP, NEXUDUS_AUTH); nothing was made.")
        return 2
    out("\nRead-only requests (role each needs: what came back)")
    for probe in check.probes:
        what = {"list": "list one page of", "read": "read one record of", "catalogue": "read the commands of"}
        request = f"{what[probe.kind]} {probe.entity.name}"
        out(f"  {probe.outcome.upper():9} {request:38} {probe.role:24} {probe.detail}")
    tried = [p for p in check.probes if p.outcome != "not tried"]
    if tried and all(p.outcome == "refused" for p in tried):
        out(
            "\n  Every request was refused: the credentials are wrong, or the user has none of the roles. "
            "Nexudus answers 401 for both."
        )
    elif any(p.outcome == "refused" for p in tried):
        out(
            "\n  A refused request (401 or 403) with others answered means the user lacks that role: "
            "give it to the user in Nexudus (Settings, Users, the user's roles) and run the check again."
        )
    out("\nWhat that means for each job")
    for job, verdict in job_verdicts(check).items():
        out(f"  {job:50} {verdict}")
    problems = _belongs_to(place, check.account)
    if problems:
        out("\nRefused: this account's place holds another account's files:")
        for problem in problems:
            out(f"  {problem}")
        out('  Choose another --name, or see the README\'s "Moving a warehouse to another account".')
        return 2
    place.make(PROJECT / "dagster.yaml")
    environment = place.environment(settings, check.username)
    env_file = place.root / "env.sh"
    env_file.write_text(
        "# The environment of this account's runs. No secrets: export NEXUDUS_PASSWORD (and, for\n"
        "# two-factor accounts, NEXUDUS_TOTP) yourself.\n"
        + "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())
    )
    out(f"\nMade {place.root} (0700): its own Dagster instance, warehouse and ledger.")
    out("The environment to use (also in " + str(env_file) + "):")
    for name, value in environment.items():
        out(f"  export {name}={shlex.quote(value)}")
    out("  export NEXUDUS_PASSWORD=...   # as for this check (and NEXUDUS_TOTP); never written down here")
    out("\nNext:")
    out(f"  . {shlex.quote(str(env_file))}")
    out("  .venv/bin/dagster job execute -m nexudus_assets.definitions -j nexudus_full_refresh   # the first sync")
    out("  .venv/bin/python scripts/dev.py   # the UI on this account's instance (make dev would use .dagster_home)")
    out("The warehouse and the ledger record this account at their first write, and refuse any other.")
    return 1 if any(p.outcome in ("refused", "failed") for p in check.probes) else 0


def move(warehouse: Path, ledger: Path | None, account: Account, out: Callable[[str], None]) -> int:
    """Record `account` in the warehouse (published at once) and its ledger, on purpose."""
    if not warehouse.exists():
        out(f"no warehouse at {warehouse}")
        return 1
    with WarehouseFiles(warehouse).write() as conn:
        before = move_to_account(conn, account)
    out(f"The warehouse {warehouse} now belongs to {account} (before: {before or 'none recorded'}).")
    ledger = ledger or default_ledger_path(warehouse)
    if ledger.exists():
        before = CommandLedger(ledger).move_to(account)
        out(f"The ledger {ledger} now belongs to {account} (before: {before or 'none recorded'}).")
    return 0


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None, out: Callable[[str], None] = print) -> int:
    """`environ`: the variables to use instead of the process's (which `nexudus_assets.settings` reads)."""
    parser = argparse.ArgumentParser(prog="python -m nexudus_assets.account", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    check_parser = commands.add_parser("check", help="check the account and make its place (the default)")
    check_parser.add_argument("--name", help="the folder under accounts/ (default: from the username)")
    check_parser.add_argument("--accounts", type=Path, default=ACCOUNTS, help=argparse.SUPPRESS)
    move_parser = commands.add_parser("move", help="record the account now configured in a warehouse and its ledger")
    move_parser.add_argument("--warehouse", type=Path, required=True)
    move_parser.add_argument("--ledger", type=Path, help="default: <warehouse stem>.ledger.sqlite beside it")
    args = parser.parse_args(list(argv) or ["check"])
    try:
        source = {} if environ is None else {"environ": environ}
        settings = Settings.from_env(**source)
        credentials = account_credentials(**source)
    except SettingsError as exc:
        out(str(exc))
        return 2
    api = settings.nexudus_api
    account = Account.of(api.base_url, credentials.username)
    if args.command == "move":
        try:
            return move(args.warehouse, args.ledger, account, out)
        except (WarehouseAccountError, LedgerError) as exc:
            out(str(exc))
            return 1
    place = AccountPlace(args.accounts / (args.name or default_name(credentials.username)))
    resolved = api.model_copy(
        update={
            "username": credentials.username,
            "password": credentials.password.get_secret_value(),
            "totp": credentials.totp.get_secret_value() if credentials.totp else None,
        }
    )
    with resolved.get_client() as client:
        check = check_account(client)
    return print_check(check, place, settings, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
