"""Helpers the test modules share: a served simulator, the code location wired to it, a webhook
receiver, another process holding a DuckDB file."""

import ast
import json
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from nexudus_assets.definitions import build_defs
from nexudus_assets.nexudus import Entity, NexudusClient, RateLimits, RetryPolicy
from nexudus_assets.resources import AlertWebhookResource, NexudusApiResource, Pacing, WarehouseResource
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME, Simulator
from nexudus_assets.warehouse import qualified
from nexudus_assets.writeback.rules import CommandRule

#: Quick retries: the tests check that retries happen and are bounded, not how long they wait.
FAST_RETRY = RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05, max_elapsed=30)
#: Columns the warehouse adds to every record, and the bag of fields the models do not know.
BOOKKEEPING = {"_extra", "_synced_at", "_deleted_at"}


class Running:
    """A served simulator and its base URL."""

    def __init__(self, sim: Simulator, base_url: str) -> None:
        self.sim = sim
        self.base_url = base_url

    def client(self, **overrides: Any) -> NexudusClient:
        settings: dict[str, Any] = {
            "username": DEFAULT_USERNAME,
            "password": DEFAULT_PASSWORD,
            "limits": RateLimits.unlimited(),
            "retry": FAST_RETRY,
        }
        settings.update(overrides)
        return NexudusClient(self.base_url, **settings)


def live_rows(conn: duckdb.DuckDBPyConnection, entity: Entity) -> dict[int, dict[str, Any]]:
    """The entity's live rows by id, as `upstream_rows` gives them: no bookkeeping, no display fields."""
    cursor = conn.execute(f"SELECT * FROM {qualified(entity)} WHERE _deleted_at IS NULL")
    names = [d[0] for d in cursor.description]
    skip = BOOKKEEPING | set(entity.model.display_fields)
    return {row[0]: {n: v for n, v in zip(names, row, strict=True) if n not in skip} for row in cursor.fetchall()}


def upstream_rows(sim: Simulator, entity: Entity) -> dict[int, dict[str, Any]]:
    """The simulator's records of the entity by id, as `live_rows` reads them from a warehouse."""
    models = [entity.model.model_validate(raw) for raw in sim.records(entity)]
    return {m.id: m.model_dump(exclude=set(entity.model.display_fields)) for m in models}


def persistent_instance(directory: Path | str) -> dg.DagsterInstance:
    """What `dagster dev` and the daemon use by default: SQLite storages, one event database per run."""
    home = Path(directory) / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.local_temp(str(home), overrides={"telemetry": {"enabled": False}})


class Project:
    """The code location wired to one simulator and one DuckDB file, run in this process on a
    persistent instance beside the file. The simulators do not enforce the published limits, so
    the client does not pace: pacing would only add minutes."""

    def __init__(
        self,
        running: Running,
        database: Path | str,
        *,
        page_size: int = 1000,
        rules: Iterable[CommandRule] = (),
        live: bool = False,
        webhook: str | None = None,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        lock_timeout_seconds: int = 120,
        instance: dg.DagsterInstance | None = None,
    ) -> None:
        self.running = running
        self.sim = running.sim
        self.database = str(database)
        self.warehouse = WarehouseResource(database=self.database, lock_timeout_seconds=lock_timeout_seconds)
        self.alerts = AlertWebhookResource(url=webhook)
        self.nexudus_api = NexudusApiResource(
            base_url=running.base_url,
            username=username,
            password=password,
            page_size=page_size,
            commands_live=live,
            pacing=Pacing(enabled=False),
            # The simulators fail on purpose, not in bursts that last: retrying at once keeps tests short.
            retry_backoff_seconds=FAST_RETRY.backoff_initial,
        )
        self.defs = build_defs(
            {"nexudus_api": self.nexudus_api, "warehouse": self.warehouse, "alerts": self.alerts}, tuple(rules)
        )
        self.instance = instance or persistent_instance(Path(database).parent)

    def run(
        self,
        job: str = "nexudus_sync",
        run_config: dict[str, Any] | None = None,
        *,
        raise_on_error: bool = True,
        assets: Iterable[str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """`assets`: run only these of the job's assets."""
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance,
            run_config=run_config or {},
            raise_on_error=raise_on_error,
            asset_selection=[dg.AssetKey(name) for name in assets] if assets is not None else None,
        )

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.warehouse.read_only_connection() as conn:
            return conn.execute(sql, params or []).fetchall()

    def live_rows(self, entity: Entity) -> dict[int, dict[str, Any]]:
        with self.warehouse.read_only_connection() as conn:
            return live_rows(conn, entity)

    def upstream_rows(self, entity: Entity) -> dict[int, dict[str, Any]]:
        return upstream_rows(self.sim, entity)

    def insight_ids(self, name: str) -> set[int]:
        return {row[0] for row in self.query(f"SELECT id FROM insights.{name}")}


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """The metadata of the run's one materialization of `asset`, as plain values."""
    [event] = [
        e.materialization for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    """The run's check evaluations by (asset, check)."""
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


class DaemonKilled(BaseException):
    """Stands for the daemon dying in the middle of a tick."""


class Webhook:
    """A webhook receiver on 127.0.0.1 that keeps every accepted post; `status` sets its answer
    (a refused post is not kept)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.status == 200:
                    receiver.posts.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [post["text"] for post in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


#: Another OS process with the file open, as the DuckDB CLI or a BI tool would have it; it runs
#: each SQL line it reads and prints the rows.
_HOLDER = """
import sys, duckdb
conn = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read_only")
print("holding", flush=True)
for line in sys.stdin:
    print(repr(conn.execute(line).fetchall()), flush=True)
"""


class Holder:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.pid = process.pid

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(sql + "\n")
        self.process.stdin.flush()
        rows: list[tuple[Any, ...]] = ast.literal_eval(self.process.stdout.readline())
        return rows


@contextmanager
def held_open(path: Path, *, read_only: bool = False) -> Iterator[Holder]:
    """`path` opened by another process for as long as the block lasts."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), "read_only" if read_only else "read_write"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout and process.stdout.readline().strip() == "holding"
        yield Holder(process)
    finally:
        assert process.stdin
        process.stdin.close()
        process.wait(timeout=30)


def _decimal(value: Any) -> Decimal | None:
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _whole(value: Any) -> int | None:
    number = _decimal(value)
    return int(number) if number is not None and number >= 0 and number == number.to_integral_value() else None


def expected_money(sim: Simulator, record: dict[str, Any]) -> tuple[Decimal | None, str]:
    """(monthly value, billing period) of a simulator contract as its list serves it, worked out
    here from the record and its plan, apart from the warehouse's SQL."""
    contracts = sim.table("CoworkerContract")
    if record["Id"] in contracts.raw:  # served verbatim: its own plan fields, if it has any
        plan = (record.get("TariffPrice"), record.get("TariffInvoiceEvery"), record.get("TariffInvoiceEveryWeeks"))
    else:
        tariff = sim.world.tariff_by_id.get(record["TariffId"])
        plan = (tariff.price, tariff.invoice_every, tariff.invoice_every_weeks) if tariff else (None, None, None)
    price = _decimal(record["Price"]) if record["Price"] is not None else _decimal(plan[0])
    months, weeks = _whole(plan[1]), _whole(plan[2])
    if months is not None and months >= 1:
        period, per_month = ("monthly" if months == 1 else f"every {months} months"), Decimal(1) / months
    elif months == 0 and weeks is not None and weeks >= 1:
        period, per_month = ("weekly" if weeks == 1 else f"every {weeks} weeks"), Decimal(52) / (12 * weeks)
    else:
        return None, "unknown"
    if price is None:
        return None, period
    value = price * int(record["Quantity"]) * per_month
    return value.quantize(Decimal("0.0001"), ROUND_HALF_UP), period
