"""Dagster resources: the Nexudus account, the DuckDB warehouse, the command ledger and the alert webhook.

Their values come from `nexudus_assets.settings`, which reads the environment.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import httpx
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr, SecretStr

from nexudus_assets.nexudus import DEFAULT_BASE_URL, NexudusClient, RateLimits, RetryPolicy, Window
from nexudus_assets.nexudus.account import Account
from nexudus_assets.nexudus.auth import AuthScheme, BearerAuth, Credentials
from nexudus_assets.nexudus.client import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_DEADLINE,
    DEFAULT_WRITE_DEADLINE,
    MAX_PAGE_SIZE,
)
from nexudus_assets.nexudus.paging import DEFAULT_MAX_PAGES
from nexudus_assets.nexudus.retry import DEFAULT_THROTTLE_PATIENCE
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
    """One Nexudus account. Every client it hands out shares the account's request budget and,
    with bearer auth, the run's one sign-in: the resource is set up once per run, and Nexudus
    keeps one token per `client_id`, so steps signing in on their own would void each other's."""

    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base, e.g. https://spaces.nexudus.com/api")
    username: str = Field(description="The Nexudus user (email) the API calls run as.")
    password: str = Field(description="That user's password. Set it with an EnvVar; it is never logged.")
    auth: AuthScheme = Field(default="basic", description="'basic', or 'bearer' for the token endpoint.")
    totp: str | None = Field(default=None, description="TOTP secret (or a current code) for two-factor accounts.")
    client_id: str | None = Field(
        default=None, description="NEXUDUS_CLIENT_ID: the bearer `client_id`; by default the username."
    )
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
    throttle_patience: float = Field(
        default=DEFAULT_THROTTLE_PATIENCE,
        description="NEXUDUS_THROTTLE_PATIENCE: seconds one request keeps waiting while the server throttles.",
    )
    retry_attempts: int = Field(
        default=RetryPolicy.max_attempts,
        description="Attempts at one read that fails (no answer, 5xx, the generic error) before the step fails.",
    )
    retry_backoff_seconds: float = Field(
        default=RetryPolicy.backoff_initial,
        description="The first wait before a failed read is tried again; each later wait doubles, with jitter.",
    )
    commands_live: bool = Field(
        default=False, description="Send commands to Nexudus (NEXUDUS_COMMANDS_LIVE=true); otherwise dry runs."
    )

    _session: BearerAuth | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        credentials = Credentials(self.username, SecretStr(self.password), SecretStr(self.totp) if self.totp else None)
        if self.totp:
            # NEXUDUS_TOTP is resolved only now, in the run: checked here, it fails naming itself
            # before any step signs in.
            credentials.totp_code()
        if self.auth == "bearer":
            self._session = BearerAuth(credentials, client_id=self.client_id)

    def account(self) -> Account:
        """The account the resource talks to, as warehouses and ledgers record it."""
        return Account.of(self.base_url, self.username)

    def get_client(self) -> NexudusClient:
        return NexudusClient(
            self.base_url,
            self.username,
            self.password,
            auth=self.auth,
            totp=self.totp,
            client_id=self.client_id,
            page_size=self.page_size,
            request_deadline=self.request_deadline,
            write_deadline=self.write_deadline,
            max_body_bytes=self.max_body_bytes,
            max_pages=self.max_pages,
            limits=self.pacing.rate_limits(),
            retry=RetryPolicy(
                max_attempts=self.retry_attempts,
                backoff_initial=self.retry_backoff_seconds,
                throttle_patience=self.throttle_patience,
            ),
            session=self._session,
        )


class CommandLedgerResource(dg.ConfigurableResource):
    """Where the command ledger lives: a SQLite file of its own (see `nexudus_assets.writeback.ledger`)."""

    path: str | None = Field(
        default=None,
        description="NEXUDUS_LEDGER_PATH; by default `<warehouse stem>.ledger.sqlite` beside the warehouse file.",
    )

    def location(self, warehouse_database: str) -> Path:
        return Path(self.path) if self.path else default_ledger_path(warehouse_database)


#: Seconds one alert may take to deliver, answer included: a webhook that trickles its answer
#: would otherwise hold the sensor's tick for as long as it likes.
ALERT_DEADLINE_SECONDS = 10.0


class AlertWebhookResource(dg.ConfigurableResource):
    """Where alerts go: an incoming webhook taking `{"text": ...}` (Slack, Mattermost, Teams-style
    receivers), or only the log."""

    url: str | None = Field(default=None, description="NEXUDUS_ALERT_WEBHOOK_URL; a secret, never logged.")

    def send(self, text: str, log: logging.Logger) -> None:
        """Logs the alert and posts it; raises RuntimeError unless the webhook answers 2xx in time.

        A redirect is not followed (it would carry the alert somewhere nobody configured) and
        counts as undelivered, as does any answer after `ALERT_DEADLINE_SECONDS`.
        """
        log.warning("alert: %s", text)
        if not self.url:
            return
        deadline = time.monotonic() + ALERT_DEADLINE_SECONDS
        try:
            with (
                httpx.Client(timeout=ALERT_DEADLINE_SECONDS, follow_redirects=False) as http,
                http.stream("POST", self.url, json={"text": text}) as response,
            ):
                for _ in response.iter_bytes():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the alert webhook did not answer within {ALERT_DEADLINE_SECONDS:g}s")
        except httpx.HTTPError as exc:  # its message may carry the URL, which holds the secret
            raise RuntimeError(f"the alert webhook could not be reached ({type(exc).__name__})") from None
        if not response.is_success:
            raise RuntimeError(f"the alert webhook answered HTTP {response.status_code}, not 2xx")


class WarehouseResource(DuckDBResource):
    """The warehouse file people open (`database`), and the private working file beside it that runs write.

    A connection lasts one piece of work (a load, a check, an insight). In a run (the jobs run in
    one process, so the resource is set up once per run) the working file is published once, when
    the run's execution ends, whether or not a step failed: every write session is one transaction,
    so what committed is consistent. Outside a run each write session publishes at its end. See
    `nexudus_assets.warehouse.files` for how the two files relate.
    """

    lock_timeout_seconds: int = Field(
        default=DEFAULT_LOCK_TIMEOUT_SECONDS,
        description=(
            f"{LOCK_TIMEOUT_VARIABLE}: how long a write waits for another process holding the working file"
            " before it fails naming that process."
        ),
    )

    _in_run: bool = PrivateAttr(default=False)
    _wrote: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = context.run is not None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Only runs that wrote: one that only reads (the command job, the freshness checks) must
        # not wait on the session lock of a sync going on. A killed run's changes go out with
        # the next run that writes.
        if self._wrote and self._files().publish_pending() and context.log is not None:
            context.log.info(f"published the warehouse to {self.database}")

    def _files(self) -> WarehouseFiles:
        return WarehouseFiles(Path(self.database), self.lock_timeout_seconds, self.connection_config)

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Read-write, on the working file; published when the block ends without error, or in a
        run when the run's execution ends."""
        # Set first: a step that fails after committing leaves what it committed to publish.
        self._wrote = self._wrote or self._in_run
        with self._files().write(publish=not self._in_run) as conn:
            yield conn

    def has_unpublished_changes(self) -> bool:
        """Whether a run wrote (and recorded materializations of) what the published file does not hold yet."""
        return self._files().has_unpublished_changes()

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
