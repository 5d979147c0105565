"""Every setting the code location takes from the environment, read in one place, once.

`Settings.from_env()` runs when the definitions load. The resources, the schedules, the freshness
checks, the sensors and the daily metrics are built from what it returns; nothing else reads the
environment. Secrets are not read at all: they stay `dg.EnvVar`s that Dagster resolves inside
each run, so no definition, and nothing the UI shows, holds one. README and deploy/.env.example
list every variable with its default.
"""

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, get_args

import dagster as dg

from nexudus_assets.nexudus import DEFAULT_BASE_URL
from nexudus_assets.nexudus.auth import AuthScheme
from nexudus_assets.nexudus.client import DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_DEADLINE, MAX_PAGE_SIZE
from nexudus_assets.nexudus.paging import DEFAULT_MAX_PAGES
from nexudus_assets.resources import Pacing
from nexudus_assets.warehouse import DEFAULT_LOCK_TIMEOUT_SECONDS, DEFAULT_WAREHOUSE_PATH, LOCK_TIMEOUT_VARIABLE
from nexudus_assets.writeback.rules import EXAMPLE_RULES

#: NEXUDUS_PACING values that switch pacing off; any other value leaves it on.
PACING_OFF = frozenset({"off", "false", "0", "no"})

Number = TypeVar("Number", int, float)

#: Always read in the run, by Dagster: the definitions hold the variables' names only.
USERNAME = dg.EnvVar("NEXUDUS_USERNAME")
PASSWORD = dg.EnvVar("NEXUDUS_PASSWORD")


class SettingsError(ValueError):
    """An environment variable whose value cannot be used; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The code location's configuration. The defaults are the documented ones."""

    # The Nexudus account.
    base_url: str = DEFAULT_BASE_URL
    username: dg.EnvVar = USERNAME
    password: dg.EnvVar = PASSWORD
    auth: AuthScheme = "basic"
    #: Set only when NEXUDUS_TOTP is.
    totp: dg.EnvVar | None = None
    page_size: int = MAX_PAGE_SIZE
    request_deadline: float = DEFAULT_REQUEST_DEADLINE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pages: int = DEFAULT_MAX_PAGES
    pacing: Pacing = field(default_factory=Pacing)
    # The warehouse and the command ledger beside it.
    duckdb_path: str = DEFAULT_WAREHOUSE_PATH
    warehouse_lock_timeout_seconds: int = DEFAULT_LOCK_TIMEOUT_SECONDS
    #: None: `<warehouse stem>.ledger.sqlite` beside the warehouse.
    ledger_path: str | None = None
    # Commands and alerts.
    commands_live: bool = False
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
    # The drift checks of each sync, in percent.
    max_rejected_percent: float = 1.0
    max_deleted_percent: float = 10.0
    metrics_start_date: str = "2026-01-01"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """Unset variables keep their defaults; a value that cannot be used raises SettingsError naming it.

        An empty value is not the default: it is refused where a value is needed, and means
        "none" for the optional settings (TOTP, ledger path, webhook, rules file, sensor interval).
        """
        read = _Reader(environ)
        defaults = cls()
        return cls(
            base_url=read.text("NEXUDUS_BASE_URL", defaults.base_url),
            auth=read.auth("NEXUDUS_AUTH", defaults.auth),
            totp=read.secret("NEXUDUS_TOTP"),
            page_size=read.number("NEXUDUS_PAGE_SIZE", defaults.page_size, int, low=1, high=MAX_PAGE_SIZE),
            request_deadline=read.number("NEXUDUS_REQUEST_DEADLINE", defaults.request_deadline, float, above=0),
            max_body_bytes=read.number("NEXUDUS_MAX_BODY_BYTES", defaults.max_body_bytes, int, low=1),
            max_pages=read.number("NEXUDUS_MAX_PAGES", defaults.max_pages, int, low=1),
            pacing=read.pacing(defaults.pacing),
            duckdb_path=read.text("NEXUDUS_DUCKDB_PATH", defaults.duckdb_path),
            warehouse_lock_timeout_seconds=read.number(
                LOCK_TIMEOUT_VARIABLE, defaults.warehouse_lock_timeout_seconds, int, low=0
            ),
            ledger_path=read.optional("NEXUDUS_LEDGER_PATH"),
            commands_live=read.flag("NEXUDUS_COMMANDS_LIVE"),
            command_rules=Path(read.optional("NEXUDUS_COMMAND_RULES") or defaults.command_rules),
            alert_webhook_url=read.secret("NEXUDUS_ALERT_WEBHOOK_URL"),
            # 0, like unset, keeps each sensor's own interval.
            sensor_interval_seconds=read.number("NEXUDUS_SENSOR_INTERVAL_SECONDS", 0, int, low=0, empty=0) or None,
            sync_cron=read.text("NEXUDUS_SYNC_CRON", defaults.sync_cron),
            full_refresh_cron=read.text("NEXUDUS_FULL_REFRESH_CRON", defaults.full_refresh_cron),
            freshness_cron=read.text("NEXUDUS_FRESHNESS_CRON", defaults.freshness_cron),
            max_sync_age_hours=read.number("NEXUDUS_MAX_SYNC_AGE_HOURS", defaults.max_sync_age_hours, float, above=0),
            max_rejected_percent=read.number(
                "NEXUDUS_MAX_REJECTED_PERCENT", defaults.max_rejected_percent, float, low=0, high=100
            ),
            max_deleted_percent=read.number(
                "NEXUDUS_MAX_DELETED_PERCENT", defaults.max_deleted_percent, float, low=0, high=100
            ),
            metrics_start_date=read.date("NEXUDUS_METRICS_START_DATE", defaults.metrics_start_date),
        )


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def optional(self, name: str) -> str | None:
        return self._environ.get(name) or None

    def flag(self, name: str) -> bool:
        """Only `true` (any case) switches it on."""
        return self._environ.get(name, "").strip().lower() == "true"

    def secret(self, name: str) -> dg.EnvVar | None:
        """The variable itself, for Dagster to resolve in the run; None when unset or empty."""
        return dg.EnvVar(name) if self._environ.get(name) else None

    def text(self, name: str, default: str) -> str:
        value = self._environ.get(name)
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
        text = self._environ.get(name)
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

    def date(self, name: str, default: str) -> str:
        value = self.text(name, default)
        try:
            dt.datetime.strptime(value, "%Y-%m-%d")
        except ValueError:
            raise SettingsError(f"{name} must be a date written YYYY-MM-DD, not {value!r}") from None
        return value

    def pacing(self, default: Pacing) -> Pacing:
        if self._environ.get("NEXUDUS_PACING", "on").lower() in PACING_OFF:
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
