"""Every setting the code location takes from the environment, read in one place, once.

`Settings.from_env()` runs when the definitions load. The resources, the schedules, the freshness
checks, the sensors and the daily metrics are built from what it returns; nothing else reads the
environment. Secrets are never kept: they stay `dg.EnvVar`s that Dagster resolves inside each
run, so no definition, and nothing the UI shows, holds one (the webhook URL's form is checked
here, without keeping or repeating it). README and deploy/.env.example
list every variable with its default.
"""

import datetime as dt
import itertools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args

import dagster as dg
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from nexudus_assets import strict_yaml
from nexudus_assets.checks import DriftLimits
from nexudus_assets.names import AccountNames
from nexudus_assets.nexudus.account import is_loopback
from nexudus_assets.nexudus.auth import AuthScheme, Credentials
from nexudus_assets.nexudus.client import MAX_PAGE_SIZE
from nexudus_assets.resources import CommandLedgerResource, NexudusApiResource, Pacing
from nexudus_assets.warehouse import DEFAULT_LOCK_TIMEOUT_SECONDS, DEFAULT_WAREHOUSE_PATH, LOCK_TIMEOUT_VARIABLE
from nexudus_assets.writeback.rules import EXAMPLE_RULES

#: The words a switch takes (any case); anything else is refused, so a typo never flips it silently.
SWITCH_WORDS = {"true": True, "false": False}
#: NEXUDUS_PACING is documented as on/off; true/false mean the same.
PACING_WORDS = {**SWITCH_WORDS, "on": True, "off": False}

Number = TypeVar("Number", int, float)

#: Always read in the run, by Dagster: the definitions hold the variables' names only.
USERNAME = dg.EnvVar("NEXUDUS_USERNAME")
PASSWORD = dg.EnvVar("NEXUDUS_PASSWORD")
#: The secrets, by the variable that holds each for the one account of a deployment without an
#: accounts file; in an accounts file each account names its own variables.
SECRETS = {
    "username": "NEXUDUS_USERNAME",
    "password": "NEXUDUS_PASSWORD",
    "totp": "NEXUDUS_TOTP",
    "alert_webhook_url": "NEXUDUS_ALERT_WEBHOOK_URL",
}


class SettingsError(ValueError):
    """An environment variable whose value cannot be used; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The code location's configuration. The defaults are the documented ones."""

    #: The account and how it is talked to. Its defaults are the resource's own, written there
    #: once (most from the client's constants); only the credentials are filled in here.
    nexudus_api: NexudusApiResource = field(
        default_factory=lambda: NexudusApiResource(username=USERNAME, password=PASSWORD)
    )
    # The warehouse and the command ledger beside it.
    duckdb_path: str = DEFAULT_WAREHOUSE_PATH
    warehouse_lock_timeout_seconds: int = DEFAULT_LOCK_TIMEOUT_SECONDS
    #: None: `<warehouse stem>.ledger.sqlite` beside the warehouse.
    ledger_path: str | None = None
    # Commands and alerts.
    command_rules: Path = EXAMPLE_RULES
    #: Set only when NEXUDUS_ALERT_WEBHOOK_URL is.
    alert_webhook_url: dg.EnvVar | None = None
    #: None: each sensor keeps its own interval.
    sensor_interval_seconds: int | None = None
    # Schedules (UTC), freshness and the daily metrics.
    sync_cron: str = "0 * * * *"
    full_refresh_cron: str = "30 2 * * *"
    freshness_cron: str = "45 * * * *"
    max_sync_age_hours: float = 3.0
    #: The drift checks of each sync; their defaults are written there once.
    drift_limits: DriftLimits = field(default_factory=DriftLimits)
    #: None: a year before the warehouse's first sync, found when the definitions load (see
    #: `nexudus_assets.assets.trends.default_start_date`).
    metrics_start_date: str | None = None
    #: The repository the code is browsed in; None: asset pages link to the local files.
    source_git_url: str | None = None
    source_git_branch: str = "main"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, secrets: Mapping[str, str] = SECRETS) -> "Settings":
        """Unset variables keep their defaults; a value that cannot be used raises SettingsError naming it.

        An empty value is not the default: it is refused where a value is needed, and means
        "none" for the optional settings (TOTP, ledger path, webhook, rules file, sensor interval).
        `secrets`: the variable holding each secret (the keys of `SECRETS`).
        """
        return cls._read(_Reader(environ), secrets)

    @classmethod
    def _read(cls, read: "_Reader", secrets: Mapping[str, str]) -> "Settings":
        defaults = cls()
        api = NexudusApiResource.model_fields
        return cls(
            nexudus_api=NexudusApiResource(
                base_url=read.api_url("NEXUDUS_BASE_URL", api["base_url"].default),
                username=dg.EnvVar(secrets["username"]),
                password=dg.EnvVar(secrets["password"]),
                auth=read.auth("NEXUDUS_AUTH", api["auth"].default),
                totp=read.secret(secrets["totp"]) if secrets.get("totp") else None,
                client_id=read.optional_word("NEXUDUS_CLIENT_ID"),
                throttle_patience=read.number(
                    "NEXUDUS_THROTTLE_PATIENCE", api["throttle_patience"].default, float, above=0
                ),
                page_size=read.number("NEXUDUS_PAGE_SIZE", api["page_size"].default, int, low=1, high=MAX_PAGE_SIZE),
                request_deadline=read.number(
                    "NEXUDUS_REQUEST_DEADLINE", api["request_deadline"].default, float, above=0
                ),
                write_deadline=read.number("NEXUDUS_WRITE_DEADLINE", api["write_deadline"].default, float, above=0),
                max_body_bytes=read.number("NEXUDUS_MAX_BODY_BYTES", api["max_body_bytes"].default, int, low=1),
                max_pages=read.number("NEXUDUS_MAX_PAGES", api["max_pages"].default, int, low=1),
                pacing=read.pacing(Pacing()),
                commands_live=read.switch("NEXUDUS_COMMANDS_LIVE", api["commands_live"].default, SWITCH_WORDS),
            ),
            duckdb_path=read.text("NEXUDUS_DUCKDB_PATH", defaults.duckdb_path),
            warehouse_lock_timeout_seconds=read.number(
                LOCK_TIMEOUT_VARIABLE, defaults.warehouse_lock_timeout_seconds, int, low=0
            ),
            ledger_path=read.optional("NEXUDUS_LEDGER_PATH"),
            command_rules=Path(read.optional("NEXUDUS_COMMAND_RULES") or defaults.command_rules),
            alert_webhook_url=read.webhook_url(secrets["alert_webhook_url"])
            if secrets.get("alert_webhook_url")
            else None,
            # 0, like unset, keeps each sensor's own interval.
            sensor_interval_seconds=read.number("NEXUDUS_SENSOR_INTERVAL_SECONDS", 0, int, low=0, empty=0) or None,
            sync_cron=read.text("NEXUDUS_SYNC_CRON", defaults.sync_cron),
            full_refresh_cron=read.text("NEXUDUS_FULL_REFRESH_CRON", defaults.full_refresh_cron),
            freshness_cron=read.text("NEXUDUS_FRESHNESS_CRON", defaults.freshness_cron),
            max_sync_age_hours=read.number("NEXUDUS_MAX_SYNC_AGE_HOURS", defaults.max_sync_age_hours, float, above=0),
            drift_limits=DriftLimits(
                max_rejected_percent=read.number(
                    "NEXUDUS_MAX_REJECTED_PERCENT", defaults.drift_limits.max_rejected_percent, float, low=0, high=100
                ),
                max_deleted_percent=read.number(
                    "NEXUDUS_MAX_DELETED_PERCENT", defaults.drift_limits.max_deleted_percent, float, low=0, high=100
                ),
            ),
            metrics_start_date=read.optional_date("NEXUDUS_METRICS_START_DATE"),
            source_git_url=read.optional_word("NEXUDUS_SOURCE_GIT_URL"),
            source_git_branch=read.text("NEXUDUS_SOURCE_GIT_BRANCH", defaults.source_git_branch),
        )


#: Where the analysts' file across every account's published warehouse goes, by default.
DEFAULT_ACROSS_ACCOUNTS_PATH = str(Path(DEFAULT_WAREHOUSE_PATH).parent / "across_accounts.duckdb")
#: An account's own: never taken from the environment for an account of an accounts file, where
#: sharing them would mix two accounts' warehouses, ledgers or sign-ins.
ACCOUNT_OWN = frozenset(
    {"NEXUDUS_BASE_URL", "NEXUDUS_AUTH", "NEXUDUS_CLIENT_ID", "NEXUDUS_DUCKDB_PATH", "NEXUDUS_LEDGER_PATH"}
)
#: Read for the deployment, not per account.
DEPLOYMENT_WIDE = frozenset({"NEXUDUS_ACCOUNTS", "NEXUDUS_ACROSS_ACCOUNTS_PATH", "NEXUDUS_ACROSS_ACCOUNTS_CRON"})
_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")


class AccountSecrets(BaseModel):
    """The names of the environment variables holding an account's secrets (never the secrets)."""

    model_config = ConfigDict(extra="forbid")

    username: str
    password: str
    totp: str | None = None
    #: None: the deployment's NEXUDUS_ALERT_WEBHOOK_URL.
    alert_webhook_url: str | None = None

    @field_validator("*")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not _VARIABLE.fullmatch(value):
            raise ValueError(f"must be the name of an environment variable (such as BRAND_A_PASSWORD), not {value!r}")
        return value


class AccountEntry(BaseModel):
    """One account of the accounts file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    base_url: str
    auth: str = NexudusApiResource.model_fields["auth"].default
    secrets: AccountSecrets
    #: Any other NEXUDUS_* setting, for this account only.
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)


class AccountsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accounts: list[AccountEntry] = Field(min_length=1)


@dataclass(frozen=True)
class AccountSettings:
    """One account of the deployment: what it is called in the instance, and its settings."""

    names: AccountNames
    settings: Settings


@dataclass(frozen=True)
class Deployment:
    """Every account the code location serves; one, under the plain names, without an accounts file."""

    accounts: tuple[AccountSettings, ...]
    #: Whether the accounts come from an accounts file (NEXUDUS_ACCOUNTS).
    from_file: bool = False
    across_accounts_path: str = DEFAULT_ACROSS_ACCOUNTS_PATH
    across_accounts_cron: str = "20 * * * *"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Deployment":
        """SettingsError naming the variable, or the accounts file, the account and the field."""
        path = environ.get("NEXUDUS_ACCOUNTS")
        if path is None:
            return cls(accounts=(AccountSettings(AccountNames(), Settings.from_env(environ)),))
        if not path.strip():
            raise SettingsError("NEXUDUS_ACCOUNTS is set but empty; unset it for one account from the environment")
        read = _Reader(environ)
        defaults = cls(accounts=())
        return cls(
            accounts=tuple(_accounts(Path(path), environ)),
            from_file=True,
            across_accounts_path=read.text(
                "NEXUDUS_ACROSS_ACCOUNTS_PATH", str(_warehouse_directory(environ) / "across_accounts.duckdb")
            ),
            across_accounts_cron=read.text("NEXUDUS_ACROSS_ACCOUNTS_CRON", defaults.across_accounts_cron),
        )


def _accounts(path: Path, environ: Mapping[str, str]) -> list[AccountSettings]:
    where = f"accounts file {path} (NEXUDUS_ACCOUNTS)"
    try:
        document = strict_yaml.load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{where}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    try:
        parsed = AccountsFile.model_validate(document)
    except ValidationError as exc:
        raise SettingsError(f"{where}: {_problems(exc, document)}") from None
    accounts = [_account(entry, environ, where) for entry in parsed.accounts]
    for first, second in itertools.combinations(accounts, 2):
        clash = _clash(first, second, environ)
        if clash:
            raise SettingsError(f"{where}: accounts {first.names.account!r} and {second.names.account!r} {clash}")
    return accounts


def _problems(error: ValidationError, document: Any) -> str:
    """Each problem with the account it is in, by name when it has one."""
    problems = []
    for problem in error.errors():
        location = list(problem["loc"])
        if location[:1] == ["accounts"] and len(location) > 1 and isinstance(location[1], int):
            entries = document.get("accounts") if isinstance(document, dict) else None
            entry = entries[location[1]] if isinstance(entries, list) and location[1] < len(entries) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            location = [f"account {name!r}" if name else f"account #{location[1] + 1}", *location[2:]]
        problems.append(f"{'.'.join(map(str, location)) or 'the file'}: {problem['msg']}")
    return "; ".join(problems)


def _account(entry: AccountEntry, environ: Mapping[str, str], where: str) -> AccountSettings:
    label = f"{where}, account {entry.name!r}"
    try:
        names = AccountNames(entry.name)
    except ValueError as exc:
        raise SettingsError(f"{label}: {exc}") from None
    given = {name: _setting_text(value) for name, value in entry.settings.items()}
    secret_variables = set(SECRETS.values())
    for name in given:
        if name in secret_variables:
            field_name = next(key for key, value in SECRETS.items() if value == name)
            raise SettingsError(
                f"{label}: {name} is a secret and does not belong in the file; name the variable holding it"
                f" under secrets.{field_name}"
            )
        if name in DEPLOYMENT_WIDE or name in ("NEXUDUS_BASE_URL", "NEXUDUS_AUTH"):
            raise SettingsError(f"{label}: {name} cannot be set per account here")
    own = {
        "NEXUDUS_BASE_URL": entry.base_url,
        "NEXUDUS_AUTH": entry.auth,
        "NEXUDUS_DUCKDB_PATH": str(_warehouse_directory(environ) / f"{entry.name}.duckdb"),
    }
    shared = {name: value for name, value in environ.items() if name not in ACCOUNT_OWN}
    secrets = {
        **entry.secrets.model_dump(),
        "alert_webhook_url": entry.secrets.alert_webhook_url or SECRETS["alert_webhook_url"],
    }
    read = _Reader({**shared, **own, **given})
    try:
        settings = Settings._read(read, secrets)
    except SettingsError as exc:
        raise SettingsError(f"{label}: {exc}") from None
    unread = sorted(set(given) - read.looked_at)
    if unread:
        raise SettingsError(
            f"{label}: settings {', '.join(unread)} are not settings of an account (a typo?), or have no effect"
            " with the others given"
        )
    return AccountSettings(names, settings)


def _warehouse_directory(environ: Mapping[str, str]) -> Path:
    """Where the accounts' warehouses go by default: beside the deployment's NEXUDUS_DUCKDB_PATH (on
    the volume, in the image), or in the default's directory."""
    return Path(environ.get("NEXUDUS_DUCKDB_PATH") or DEFAULT_WAREHOUSE_PATH).parent


def _setting_text(value: str | int | float | bool) -> str:
    """As the environment would hold it: YAML's `true` is the switch word `true`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _clash(first: AccountSettings, second: AccountSettings, environ: Mapping[str, str]) -> str | None:
    """What two accounts of one file share that they must not; None when nothing."""
    one, other = first.settings, second.settings
    if Path(one.duckdb_path).resolve() == Path(other.duckdb_path).resolve():
        return f"share the warehouse {one.duckdb_path}; give each its own NEXUDUS_DUCKDB_PATH"
    ledgers = [
        CommandLedgerResource(path=settings.ledger_path).location(settings.duckdb_path).resolve()
        for settings in (one, other)
    ]
    if ledgers[0] == ledgers[1]:
        return f"share the command ledger {ledgers[0]}; give each its own NEXUDUS_LEDGER_PATH"

    def user(settings: Settings) -> str:
        username = settings.nexudus_api.username
        variable = username.env_var_name if isinstance(username, dg.EnvVar) else username
        return environ.get(variable) or variable

    if one.nexudus_api.base_url == other.nexudus_api.base_url and user(one) == user(other):
        return f"are the same account ({one.nexudus_api.base_url}, one user); list it once"
    return None


def account_credentials(environ: Mapping[str, str] = os.environ) -> Credentials:
    """The credentials themselves, for a command run outside Dagster (the account check); never printed."""
    missing = [name for name in ("NEXUDUS_USERNAME", "NEXUDUS_PASSWORD") if not environ.get(name)]
    if missing:
        raise SettingsError(f"{' and '.join(missing)} must be set to reach the account")
    totp = environ.get("NEXUDUS_TOTP")
    return Credentials(
        username=environ["NEXUDUS_USERNAME"],
        password=SecretStr(environ["NEXUDUS_PASSWORD"]),
        totp=SecretStr(totp) if totp else None,
    )


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        #: Every variable looked at, set or not: an accounts file's settings must each be one of them.
        self.looked_at: set[str] = set()

    def _get(self, name: str) -> str | None:
        self.looked_at.add(name)
        return self._environ.get(name)

    def optional(self, name: str) -> str | None:
        return self._get(name) or None

    def optional_word(self, name: str) -> str | None:
        value = self.optional(name)
        if value is not None and _WHITESPACE.search(value):
            raise SettingsError(f"{name} must not contain whitespace (a stray space or newline?)")
        return value

    def switch(self, name: str, default: bool, words: Mapping[str, bool]) -> bool:
        """One of `words` (any case); unset or empty: `default`. Whitespace around it is refused,
        as everywhere: a value with a stray newline is a value nobody meant."""
        value = self._get(name) or ""
        if not value:
            return default
        if value.lower() not in words:
            raise SettingsError(f"{name} must be {' or '.join(words)}, not {value!r}")
        return words[value.lower()]

    def secret(self, name: str) -> dg.EnvVar | None:
        """The variable itself, for Dagster to resolve in the run; None when unset or empty."""
        return dg.EnvVar(name) if self._get(name) else None

    def api_url(self, name: str, default: str) -> str:
        """`https://`, or `http://` to this machine only (a simulator): Basic credentials never travel in clear."""
        value = self.text(name, default)
        scheme, host = _url_parts(name, value)
        if scheme == "https" or (scheme == "http" and is_loopback(host)):
            return value
        raise SettingsError(
            f"{name} must start with https:// (http:// only to a loopback address such as 127.0.0.1), not {value!r}"
        )

    def webhook_url(self, name: str) -> dg.EnvVar | None:
        """Checked here, though it stays an EnvVar: its value is a secret, so the error never repeats it."""
        value = self._get(name)
        if value:
            try:
                scheme, _ = _url_parts(name, value)
            except SettingsError:
                raise SettingsError(f"{name} must be an http(s) URL without whitespace") from None
            if scheme not in ("http", "https"):
                raise SettingsError(f"{name} must be an http(s) URL without whitespace")
        return self.secret(name)

    def text(self, name: str, default: str) -> str:
        value = self._get(name)
        if value is None:
            return default
        if not value.strip():
            raise SettingsError(f"{name} is set but empty; unset it for the default {default!r}")
        return value

    def auth(self, name: str, default: AuthScheme) -> AuthScheme:
        value = self.text(name, default).strip().lower()
        schemes: dict[str, AuthScheme] = {scheme: scheme for scheme in get_args(AuthScheme)}
        if value not in schemes:
            raise SettingsError(f"{name} must be {' or '.join(schemes)}, not {value!r}")
        return schemes[value]

    def number(
        self,
        name: str,
        default: Number,
        kind: Callable[[str], Number],
        *,
        low: Number | None = None,
        high: Number | None = None,
        above: Number | None = None,
        empty: Number | None = None,
    ) -> Number:
        """`empty`: what an empty value means; without it an empty value is refused."""
        text = self._get(name)
        if text is None:
            return default
        if not text.strip() and empty is not None:
            return empty
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise SettingsError(f"{name} must be {what}, not {text!r}") from None
        if (
            (low is not None and value < low)
            or (high is not None and value > high)
            or (above is not None and not value > above)
        ):
            bounds = [
                *([f"at least {low}"] if low is not None else []),
                *([f"above {above}"] if above is not None else []),
                *([f"at most {high}"] if high is not None else []),
            ]
            raise SettingsError(f"{name} must be {' and '.join(bounds)}, not {text!r}")
        return value

    def optional_date(self, name: str) -> str | None:
        """YYYY-MM-DD; unset: None. Empty is refused: a date is what the setting needs."""
        value = self._get(name)
        if value is None:
            return None
        try:
            dt.datetime.strptime(value, "%Y-%m-%d")
        except ValueError:
            raise SettingsError(f"{name} must be a date written YYYY-MM-DD, not {value!r}") from None
        return value

    def pacing(self, default: Pacing) -> Pacing:
        if not self.switch("NEXUDUS_PACING", default.enabled, PACING_WORDS):
            return Pacing(enabled=False)
        return Pacing(
            min_interval_ms=self.number("NEXUDUS_MIN_INTERVAL_MS", default.min_interval_ms, float, low=0),
            max_per_minute=self.number("NEXUDUS_MAX_PER_MINUTE", default.max_per_minute, int, low=1),
            max_per_hour=self.number("NEXUDUS_MAX_PER_HOUR", default.max_per_hour, int, low=1),
            max_per_day=self.number("NEXUDUS_MAX_PER_DAY", default.max_per_day, int, low=1),
            max_writes_per_minute=self.number(
                "NEXUDUS_MAX_WRITES_PER_MINUTE", default.max_writes_per_minute, int, low=1
            ),
            max_writes_per_day=self.number("NEXUDUS_MAX_WRITES_PER_DAY", default.max_writes_per_day, int, low=1),
            margin_ms=self.number("NEXUDUS_PACING_MARGIN_MS", default.margin_ms, float, low=0),
        )


_WHITESPACE = re.compile(r"\s")
_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[^\]]*\]|[^/:?#@]+)(?::\d+)?(?:[/?#]\S*)?", re.I)


def _url_parts(name: str, value: str) -> tuple[str, str]:
    """(scheme, host) of an absolute URL; SettingsError naming `name` for whitespace or no URL at all."""
    if _WHITESPACE.search(value):
        raise SettingsError(f"{name} must not contain whitespace (a stray space or newline?): {value!r}")
    found = _URL.fullmatch(value)
    if found is None:
        raise SettingsError(f"{name} must be an absolute URL such as https://spaces.nexudus.com/api, not {value!r}")
    return found["scheme"].lower(), found["host"].strip("[]").lower()
