"""Dagster resources: the Nexudus account, the DuckDB warehouse, the command ledger and the alert webhook.

Their values come from `nexudus_assets.settings`, which reads the environment.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import httpx
from dagster_duckdb import DuckDBResource
from pydantic import Field

from nexudus_assets.nexudus import DEFAULT_BASE_URL, NexudusClient, RateLimits, Window
from nexudus_assets.nexudus.auth import AuthScheme
from nexudus_assets.nexudus.client import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_DEADLINE,
    DEFAULT_WRITE_DEADLINE,
    MAX_PAGE_SIZE,
)
from nexudus_assets.nexudus.paging import DEFAULT_MAX_PAGES
from nexudus_assets.warehouse import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    LOCK_TIMEOUT_VARIABLE,
    WarehouseFiles,
)
from nexudus_assets.writeback.ledger import default_ledger_path


class Pacing(dg.Config):
    """The published request limits the client holds itself to, per account."""

    enabled: bool = Field(default=True, description="NEXUDUS_PACING: off only for servers without limits.")
    min_interval_ms: float = Field(default=100, description="NEXUDUS_MIN_INTERVAL_MS: between any two requests.")
    max_per_minute: int = Field(default=120, description="NEXUDUS_MAX_PER_MINUTE: requests of any method.")
    max_per_hour: int = Field(default=5_000, description="NEXUDUS_MAX_PER_HOUR: requests of any method.")
    max_per_day: int = Field(default=200_000, description="NEXUDUS_MAX_PER_DAY: requests of any method.")
    max_writes_per_minute: int = Field(default=60, description="NEXUDUS_MAX_WRITES_PER_MINUTE: POST, PUT, DELETE.")
    max_writes_per_day: int = Field(default=5_000, description="NEXUDUS_MAX_WRITES_PER_DAY: POST, PUT, DELETE.")
    margin_ms: float = Field(
        default=10, description="NEXUDUS_PACING_MARGIN_MS: added to every window, for a server clock running fast."
    )

    def rate_limits(self) -> RateLimits:
        if not self.enabled:
            return RateLimits.unlimited()
        return RateLimits(
            all_methods=(
                Window(requests=1, seconds=self.min_interval_ms / 1000),
                Window(requests=self.max_per_minute, seconds=60),
                Window(requests=self.max_per_hour, seconds=3_600),
                Window(requests=self.max_per_day, seconds=86_400),
            ),
            writes=(
                Window(requests=self.max_writes_per_minute, seconds=60),
                Window(requests=self.max_writes_per_day, seconds=86_400),
            ),
            margin=self.margin_ms / 1000,
        )


class NexudusApiResource(dg.ConfigurableResource):
    """One Nexudus account. Every client it hands out shares the account's request budget."""

    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base, e.g. https://spaces.nexudus.com/api")
    username: str = Field(description="The Nexudus user (email) the API calls run as.")
    password: str = Field(description="That user's password. Set it with an EnvVar; it is never logged.")
    auth: AuthScheme = Field(default="basic", description="'basic', or 'bearer' for the token endpoint.")
    totp: str | None = Field(default=None, description="TOTP secret (or a current code) for two-factor accounts.")
    page_size: int = Field(default=MAX_PAGE_SIZE, description="Records per list request (at most 1000).")
    request_deadline: float = Field(
        default=DEFAULT_REQUEST_DEADLINE, description="Seconds one request may take, answer included."
    )
    write_deadline: float = Field(
        default=DEFAULT_WRITE_DEADLINE, description="Seconds a command or a PUT may take, answer included."
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, description="The largest answer accepted, in bytes.")
    max_pages: int = Field(default=DEFAULT_MAX_PAGES, description="The most pages one walk through a list reads.")
    pacing: Pacing = Field(default_factory=Pacing, description="The published limits every request is paced to.")
    commands_live: bool = Field(
        default=False, description="Send commands to Nexudus (NEXUDUS_COMMANDS_LIVE=true); otherwise dry runs."
    )

    def get_client(self) -> NexudusClient:
        return NexudusClient(
            self.base_url,
            self.username,
            self.password,
            auth=self.auth,
            totp=self.totp,
            page_size=self.page_size,
            request_deadline=self.request_deadline,
            write_deadline=self.write_deadline,
            max_body_bytes=self.max_body_bytes,
            max_pages=self.max_pages,
            limits=self.pacing.rate_limits(),
        )


class CommandLedgerResource(dg.ConfigurableResource):
    """Where the command ledger lives: a SQLite file of its own (see `nexudus_assets.writeback.ledger`)."""

    path: str | None = Field(
        default=None,
        description="NEXUDUS_LEDGER_PATH; by default `<warehouse stem>.ledger.sqlite` beside the warehouse file.",
    )

    def location(self, warehouse_database: str) -> Path:
        return Path(self.path) if self.path else default_ledger_path(warehouse_database)


class AlertWebhookResource(dg.ConfigurableResource):
    """Where alerts go: a Slack-style incoming webhook (`{"text": ...}`), or only the log."""

    url: str | None = Field(default=None, description="NEXUDUS_ALERT_WEBHOOK_URL; a secret, never logged.")

    def send(self, text: str, log: logging.Logger) -> None:
        """Logs the alert and posts it; raises when the webhook does not take it."""
        log.warning("alert: %s", text)
        if not self.url:
            return
        try:
            response = httpx.post(self.url, json={"text": text}, timeout=10)
        except httpx.HTTPError as exc:  # its message may carry the URL, which holds the secret
            raise RuntimeError(f"the alert webhook could not be reached ({type(exc).__name__})") from None
        if response.is_error:
            raise RuntimeError(f"the alert webhook answered HTTP {response.status_code}")


class WarehouseResource(DuckDBResource):
    """The warehouse file people open (`database`), and the private working file beside it that runs write.

    A connection lasts one piece of work (a load, a check, an insight). See
    `nexudus_assets.warehouse.files` for how the two files relate.
    """

    lock_timeout_seconds: int = Field(
        default=DEFAULT_LOCK_TIMEOUT_SECONDS,
        description=(
            f"{LOCK_TIMEOUT_VARIABLE}: how long a write waits for another process holding the working file"
            " before it fails naming that process."
        ),
    )

    def _files(self) -> WarehouseFiles:
        return WarehouseFiles(Path(self.database), self.lock_timeout_seconds, self.connection_config)

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Read-write, on the working file; published for readers when the block ends without error."""
        with self._files().write() as conn:
            yield conn

    @contextmanager
    def working_read_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Read-only, on the working file as the run's last write left it; publishes nothing.

        For asset checks and metadata inside a run. Raises WarehouseNotSyncedError before the first sync.
        """
        with self._files().read_latest() as conn:
            yield conn

    @contextmanager
    def read_only_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Read-only, on the published snapshot, never waiting; for sensors and the command job.

        Raises WarehouseNotSyncedError before the first sync, and WarehouseBusyError in the moment
        someone holds the published file read-write while a run writes: skip and retry.
        """
        with self._files().read_published() as conn:
            yield conn
