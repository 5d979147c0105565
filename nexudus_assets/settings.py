"""Every setting the code location takes from the environment, read in one place, once.

`Settings.from_env()` runs when the definitions load. The resources, the schedules, the freshness
checks, the sensors and the daily metrics are built from what it returns; nothing else reads the
environment. Secrets are never kept: they stay `dg.EnvVar`s that Dagster resolves inside each
run, so no definition, and nothing the UI shows, holds one (the webhook URL's form is checked
here, without keeping or repeating it). README and deploy/.env.example
list every variable with its default.
"""

import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, get_args

import dagster as dg
from pydantic import SecretStr

from nexudus_assets.checks import DriftLimits
from nexudus_assets.nexudus.account import is_loopback
from nexudus_assets.nexudus.auth import AuthScheme, Credentials
from nexudus_assets.nexudus.client import MAX_PAGE_SIZE
from nexudus_assets.resources import NexudusApiResource, Pacing
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
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """Unset variables keep their defaults; a value that cannot be used raises SettingsError naming it.

        An empty value is not the default: it is refused where a value is needed, and means
        "none" for the optional settings (TOTP, ledger path, webhook, rules file, sensor interval).
        """
        read = _Reader(environ)
        defaults = cls()
        api = NexudusApiResource.model_fields
        return cls(
            nexudus_api=NexudusApiResource(
                base_url=read.api_url("NEXUDUS_BASE_URL", api["base_url"].default),
                username=USERNAME,
                password=PASSWORD,
                auth=read.auth("NEXUDUS_AUTH", api["auth"].default),
                totp=read.secret("NEXUDUS_TOTP"),
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
            alert_webhook_url=read.webhook_url("NEXUDUS_ALERT_WEBHOOK_URL"),
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

    def optional(self, name: str) -> str | None:
        return self._environ.get(name) or None

    def optional_word(self, name: str) -> str | None:
        value = self.optional(name)
        if value is not None and _WHITESPACE.search(value):
            raise SettingsError(f"{name} must not contain whitespace (a stray space or newline?)")
        return value

    def switch(self, name: str, default: bool, words: Mapping[str, bool]) -> bool:
        """One of `words` (any case); unset or empty: `default`. Whitespace around it is refused,
        as everywhere: a value with a stray newline is a value nobody meant."""
        value = self._environ.get(name, "")
        if not value:
            return default
        if value.lower() not in words:
            raise SettingsError(f"{name} must be {' or '.join(words)}, not {value!r}")
        return words[value.lower()]

    def secret(self, name: str) -> dg.EnvVar | None:
        """The variable itself, for Dagster to resolve in the run; None when unset or empty."""
        return dg.EnvVar(name) if self._environ.get(name) else None

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
        value = self._environ.get(name)
        if value:
            try:
                scheme, _ = _url_parts(name, value)
            except SettingsError:
                raise SettingsError(f"{name} must be an http(s) URL without whitespace") from None
            if scheme not in ("http", "https"):
                raise SettingsError(f"{name} must be an http(s) URL without whitespace")
        return self.secret(name)

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

    def optional_date(self, name: str) -> str | None:
        """YYYY-MM-DD; unset: None. Empty is refused: a date is what the setting needs."""
        value = self._environ.get(name)
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
