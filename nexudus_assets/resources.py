"""Dagster resources: the Nexudus account and the DuckDB warehouse, configured from the environment."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
import httpx
from dagster._utils.backoff import backoff
from dagster_duckdb import DuckDBResource
from pydantic import Field

from nexudus_assets.nexudus import DEFAULT_BASE_URL, NexudusClient, RateLimits
from nexudus_assets.warehouse import connect


class NexudusResource(dg.ConfigurableResource):
    """One Nexudus account. Every client it hands out shares the account's request budget."""

    base_url: str = Field(default=DEFAULT_BASE_URL, description="API base, e.g. https://spaces.nexudus.com/api")
    username: str = Field(description="The Nexudus user (email) the API calls run as.")
    password: str = Field(description="That user's password. Set it with an EnvVar; it is never logged.")
    auth: str = Field(default="basic", description="'basic', or 'bearer' for the token endpoint.")
    totp: str | None = Field(default=None, description="TOTP secret (or a current code) for two-factor accounts.")
    page_size: int = Field(default=1000, description="Records per list request (at most 1000).")
    commands_live: bool = Field(
        default=False, description="Send commands to Nexudus (NEXUDUS_COMMANDS_LIVE=true); otherwise dry runs."
    )

    def get_client(self) -> NexudusClient:
        # Pacing numbers come from NEXUDUS_PACING / NEXUDUS_MAX_* (see README): one place for them.
        return NexudusClient(
            self.base_url,
            self.username,
            self.password,
            auth=self.auth,  # type: ignore[arg-type]
            totp=self.totp,
            page_size=self.page_size,
            limits=RateLimits.from_env(),
        )


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
    """The DuckDB file. A connection lasts one piece of work (a load, a check): DuckDB lets one process write."""

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # Another process may hold the file for a moment (a sensor, a finishing run): wait for it.
        conn = backoff(
            fn=connect,
            retry_on=(duckdb.IOException,),
            kwargs={"database": self.database, "config": self.connection_config},
            max_retries=10,
        )
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def read_only_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """For sensors. Raises `duckdb.IOException` while a run holds the file: skip and retry."""
        conn = connect(self.database, read_only=True, config=self.connection_config)
        try:
            yield conn
        finally:
            conn.close()
