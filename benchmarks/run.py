"""`make bench`: the performance figures, each beside what it is judged against.

Everything runs against simulators this script starts on 127.0.0.1, and every figure comes from
this run. Prints one table at the end and writes the same figures to benchmarks/results/latest.json.

    python benchmarks/run.py              # the real sizes (about 6 minutes on 2 cores)
    python benchmarks/run.py --quick      # 10x smaller, to check the harness
    python benchmarks/run.py --only 1,3   # some measurements
    python benchmarks/run.py --only 7     # the hourly run at 1.2M records against 10k
    python benchmarks/run.py --only 8     # three accounts in parallel under the published limits
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
from nexudus_assets.warehouse import WarehouseFiles
from processes import ENTITIES, PASSWORD, USERNAME, BenchmarkError, Measured, Simulator, run_measured

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Run as a script, only benchmarks/ is on sys.path; the deployed shape as processes (code server,
# daemon, webserver) lives in the test package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = HERE / "results"
PYTHON = sys.executable
JOB = ["-m", "dagster", "job", "execute", "-m", "nexudus_assets.definitions", "-j", "nexudus_sync"]
BARE_JOB = ["-m", "dagster", "job", "execute", "-f", "benchmarks/bare_job.py", "-j", "bare"]
INSIGHTS = ["-m", "dagster", "asset", "materialize", "-m", "nexudus_assets.definitions",
            "--select", "group:nexudus_insights"]
SEED = 5
PAGE_SIZE = 1000
MB = 1024 * 1024
_T0 = time.monotonic()


def progress(message: str) -> None:
    # The load average shows when something else on the machine competes for the CPUs.
    print(f"[{time.monotonic() - _T0:7.1f}s, load {os.getloadavg()[0]:4.1f}] {message}", flush=True)


@dataclass(frozen=True)
class Sizes:
    tokens: int
    contracts: int
    passes: int
    big_tokens: int
    #: Hourly runs in the instance of measurement 6: a year.
    year_runs: int
    #: (tokens, contracts, passes) of measurement 7's large and small accounts.
    scaling_big: tuple[int, int, int]
    scaling_small: tuple[int, int, int]
    #: (tokens, contracts, passes) of each account of measurement 8, its server serving 100 a page.
    accounts: tuple[tuple[int, int, int], ...]

    @property
    def records(self) -> int:
        return self.tokens + self.contracts + self.passes


FULL = Sizes(tokens=30_000, contracts=10_000, passes=10_000, big_tokens=1_000_000, year_runs=8_760,
             scaling_big=(1_000_000, 100_000, 100_000), scaling_small=(8_000, 1_000, 1_000),
             accounts=((6_000, 2_000, 2_000), (5_000, 3_000, 2_000), (4_000, 2_000, 4_000)))
QUICK = Sizes(tokens=3_000, contracts=1_000, passes=1_000, big_tokens=100_000, year_runs=500,
              scaling_big=(100_000, 10_000, 10_000), scaling_small=(800, 100, 100),
              accounts=((300, 100, 100), (250, 150, 100), (200, 100, 200)))


@dataclass
class Row:
    measurement: str
    figure: str
    value: float | None
    unit: str
    target: str = ""
    #: "pass", "miss", "" (no target stated) or "error".
    verdict: str = ""
    note: str = ""

    def shown(self) -> str:
        if self.value is None:
            return f"{self.figure}: {self.note}"
        number = f"{self.value:,.0f}" if abs(self.value) >= 100 else f"{self.value:.2f}".rstrip("0").rstrip(".")
        return f"{self.figure}: {number} {self.unit}".rstrip() + (f" ({self.note})" if self.note else "")


@dataclass
class Bench:
    sizes: Sizes
    work: Path
    repeat: int
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    #: The 50k warehouse after measurement 1's full sync, for measurement 3.
    synced_50k: Path | None = None
    _counter: int = 0

    def fresh(self, name: str) -> tuple[Path, Path]:
        """A new DuckDB path and a new DAGSTER_HOME holding a copy of the repo's dagster.yaml."""
        self._counter += 1
        home = self.work / f"{self._counter:02d}-{name}-home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        return self.work / f"{self._counter:02d}-{name}.duckdb", home

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)

    def note_command(self, measurement: str, line: str) -> None:
        self.commands.setdefault(measurement, []).append(line)


# ----------------------------------------------------------------------------- runners


def run_job(
    sim: Simulator, name: str, *, database: Path, home: Path, pacing: bool, timeout: float, args: list[str] = JOB
) -> Measured:
    env = sim.env(NEXUDUS_DUCKDB_PATH=str(database), DAGSTER_HOME=str(home))
    if not pacing:
        env["NEXUDUS_PACING"] = "off"
    return run_measured([PYTHON, *args], env=env, cwd=REPO, log=RESULTS / "logs" / f"{name}.log", timeout=timeout)


def job_line(sim: Simulator, pacing: bool, args: list[str] = JOB) -> str:
    pacing_env = "" if pacing else "NEXUDUS_PACING=off "
    return (
        f"NEXUDUS_BASE_URL=<simulator>/api NEXUDUS_USERNAME={USERNAME} NEXUDUS_PASSWORD={PASSWORD} {pacing_env}"
        f"NEXUDUS_DUCKDB_PATH=<new file> DAGSTER_HOME=<new dir with dagster.yaml> python {' '.join(args)}"
        f"   # simulator: {sim.command}"
    )


def run_timings(home: Path) -> tuple[float, dict[str, float]]:
    """The newest run's own duration (RUN_START to its end) and each step's, from its Dagster instance."""
    import dagster as dg  # slow to import, and only needed once a job has run

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        run = instance.get_runs(limit=1)[0]
        stats = instance.get_run_stats(run.run_id)
        steps = {s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in instance.get_run_step_stats(run.run_id)}
        return (stats.end_time or 0) - (stats.start_time or 0), steps
    finally:
        instance.dispose()


@contextmanager
def warehouse(database: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = duckdb.connect()
    try:
        # Attached under a fixed name, as the project does, so `raw.x` means the schema.
        conn.execute(f"ATTACH '{database}' AS w (READ_ONLY)")
        conn.execute("USE w")
        yield conn
    finally:
        conn.close()


def expect_rows(what: str, database: Path, expected: dict[str, int]) -> None:
    """A fast sync that loaded the wrong data measures nothing: refuse the figure."""
    with warehouse(database) as conn:
        found = {table: conn.execute(f"SELECT count(*) FROM raw.{table}").fetchall()[0][0]
                 for table, _, _ in ENTITIES}
    if found != expected:
        raise BenchmarkError(f"{what} loaded {found}, expected {expected}")


def step_groups(steps: dict[str, float]) -> dict[str, tuple[int, float]]:
    """Step seconds summed by kind: (number of steps, seconds)."""
    tables = [table for table, _, _ in ENTITIES]
    groups: dict[str, tuple[int, float]] = {}
    for key, seconds in steps.items():
        if key in tables or key == "nexudus_commands":
            kind = "api"
        elif key.endswith("_insights"):
            kind = "insights"
        else:
            kind = "checks"
        count, total = groups.get(kind, (0, 0.0))
        groups[kind] = (count + 1, total + seconds)
    return groups


def describe_steps(steps: dict[str, float]) -> str:
    return ", ".join(f"{kind} {count} steps {seconds:.1f} s" for kind, (count, seconds) in sorted(step_groups(steps).items()))


def fetch_floor(sim: Simulator) -> tuple[float, int, int]:
    """The same pages, fetched one after the other and parsed, nothing else: (seconds, requests, records)."""
    requests = records = 0
    started = time.monotonic()
    with httpx.Client(base_url=sim.base_url + "/", auth=(USERNAME, PASSWORD), timeout=60) as client:
        for _, path, _ in ENTITIES:
            page, pages = 1, 1
            while page <= pages:
                answer = client.get(path, params={"page": page, "size": PAGE_SIZE, "orderby": "Id"})
                body = answer.raise_for_status().json()
                requests += 1
                records += len(body["Records"])
                pages = body["TotalPages"]
                page += 1
    return time.monotonic() - started, requests, records


def simulator(
    name: str, tokens: int, contracts: int, passes: int, *, enforce: bool = False, jitter_ms: int = 0
) -> Simulator:
    progress(f"starting the simulator ({tokens:,} tokens, {contracts:,} contracts, {passes:,} passes"
             f"{', enforcing the published limits' if enforce else ''}"
             f"{f', each request seen 0-{jitter_ms} ms late' if jitter_ms else ''})")
    return Simulator(tokens=tokens, contracts=contracts, passes=passes, seed=SEED, enforce_limits=enforce,
                     log=RESULTS / "logs" / f"simulator-{name}.log",
                     arguments=["--jitter-ms", str(jitter_ms)] if jitter_ms else [])


def bare_job_seconds(bench: Bench, rounds: int = 3) -> float:
    """Median wall time of the yardstick, three assets that do nothing started as our jobs are
    (benchmarks/bare_job.py); measured once per benchmark run and reused."""
    if "bare_s" not in bench.details:
        walls = []
        for round_ in range(1, rounds + 1):
            home = bench.fresh(f"bare-{round_}")[1]
            walls.append(run_measured([PYTHON, *BARE_JOB], env={**os.environ, "DAGSTER_HOME": str(home)}, cwd=REPO,
                                      log=RESULTS / "logs" / f"bare-{round_}.log", timeout=300).seconds)
        bench.details["bare_s"] = walls
        bench.details["bare_events"] = run_events(home)
        bench.note_command("bare", "DAGSTER_HOME=<new dir with dagster.yaml> python " + " ".join(BARE_JOB))
    return statistics.median(bench.details["bare_s"])


def run_events(home: Path) -> dict[str, int]:
    """What the newest run wrote to its instance: every event, and by type."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        run = instance.get_runs(limit=1)[0]
        entries = instance.all_logs(run.run_id)
        by_type: dict[str, int] = {}
        for entry in entries:
            kind = entry.dagster_event_type.value if entry.dagster_event_type else "log message"
            by_type[kind] = by_type.get(kind, 0) + 1
        return {"events": len(entries), **dict(sorted(by_type.items()))}
    finally:
        instance.dispose()


def list_requests(stats: dict[str, Any]) -> dict[str, int]:
    by_path: dict[str, int] = stats["by_path"]
    return {table: by_path.get(f"/api/{path}", 0) for table, path, _ in ENTITIES}


def ratio_row(measurement: str, figure: str, rounds: list[float], limit: float) -> Row:
    """The median of per-round ratios: each round's contenders ran minutes apart under the same load."""
    value = statistics.median(rounds)
    note = "rounds: " + ", ".join(f"{r:.2f}" for r in rounds) if len(rounds) > 1 else ""
    return Row(measurement, figure, value, "", f"<= {limit}", "pass" if value <= limit else "miss", note)


# ----------------------------------------------------------------------------- measurements


def measure_sync_50k(bench: Bench, *, full: bool, incremental: bool) -> None:
    """Measurement 1 (full sync beside its floor, Dagster's start-up and dlt) and 3 (incremental)."""
    sizes = bench.sizes
    expected = {"access_tokens": sizes.tokens, "coworker_contracts": sizes.contracts,
                "coworker_time_passes": sizes.passes}
    with simulator("50k", sizes.tokens, sizes.contracts, sizes.passes) as sim:
        if full:
            with simulator("empty", 0, 0, 0) as empty:
                measure_full_sync(bench, sim, empty, expected)
        else:
            progress("full sync first (not measured): measurement 3 changes a synced warehouse")
            database, home = bench.fresh("m3-setup")
            run_job(sim, "m3-setup", database=database, home=home, pacing=False, timeout=900)
            bench.synced_50k = database
        if incremental:
            measure_incremental(bench, sim)


def measure_full_sync(bench: Bench, sim: Simulator, empty: Simulator, expected: dict[str, int]) -> None:
    records = bench.sizes.records
    walls: dict[str, list[float]] = {"ours": [], "floor": [], "startup": [], "dlt": []}
    cpus: dict[str, list[float]] = {"ours": [], "startup": [], "dlt": []}
    loads: list[float] = []
    requests: dict[str, int] = {}
    in_run: list[float] = []
    steps: dict[str, float] = {}
    # Alternating the contenders spreads any drift of the machine over all of them.
    for attempt in range(1, bench.repeat + 1):
        tag = f" (round {attempt} of {bench.repeat})" if bench.repeat > 1 else ""
        loads.append(os.getloadavg()[0])
        progress(f"1(a) fetch floor: plain httpx over the same pages{tag}")
        sim.reset_stats()
        seconds, _, fetched = fetch_floor(sim)
        if fetched != records:
            raise BenchmarkError(f"the fetch floor read {fetched} records, expected {records}")
        walls["floor"].append(seconds)
        requests["floor"] = sim.stats()["requests"]

        progress(f"1   our nexudus_sync job, CLI, pacing off{tag}")
        database, home = bench.fresh("m1-ours")
        sim.reset_stats()
        ours = run_job(sim, "m1-ours", database=database, home=home, pacing=False, timeout=900)
        walls["ours"].append(ours.seconds)
        cpus["ours"].append(ours.cpu_seconds)
        stats = sim.stats()
        requests["ours"], requests["ours_lists"] = stats["requests"], sum(list_requests(stats).values())
        expect_rows("our job", database, expected)
        seconds, steps = run_timings(home)
        in_run.append(seconds)
        bench.synced_50k = database

        progress(f"1(b) Dagster's start-up: the same job against an empty simulator{tag}")
        database, home = bench.fresh("m1-startup")
        startup = run_job(empty, "m1-startup", database=database, home=home, pacing=False, timeout=600)
        walls["startup"].append(startup.seconds)
        cpus["startup"].append(startup.cpu_seconds)

        progress(f"1(c) dlt rest_api pipeline into DuckDB{tag}")
        database, _ = bench.fresh("m1-dlt")
        dlt_dir = bench.work / f"dlt-{attempt}"
        dlt_dir.mkdir()
        sim.reset_stats()
        dlt_env = sim.env(RUNTIME__DLTHUB_TELEMETRY="false", DLT_DATA_DIR=str(dlt_dir / "data"))
        dlt = run_measured(
            [PYTHON, str(HERE / "dlt_pipeline.py"), str(database), str(dlt_dir / "pipelines")],
            env=dlt_env, cwd=dlt_dir, log=RESULTS / "logs" / "m1-dlt.log", timeout=900,
        )
        walls["dlt"].append(dlt.seconds)
        cpus["dlt"].append(dlt.cpu_seconds)
        requests["dlt"] = sim.stats()["requests"]
        expect_rows("dlt", database, expected)

    wall = {name: statistics.median(values) for name, values in walls.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    bench.details["1"] = {"walls_s": walls, "median_s": wall, "cpu_s": cpus, "requests": requests,
                          "records": records, "ours_in_run_s": in_run, "ours_steps_s": steps, "load_before": loads}
    repeat_note = f"median of {bench.repeat}" if bench.repeat > 1 else ""
    m = f"1 full sync {records:,}"
    bench.add(
        Row(m, "ours: wall (CLI job, pacing off)", wall["ours"], "s",
            note=", ".join(filter(None, [repeat_note, f"CPU {cpu['ours']:.1f} s"]))),
        Row(m, "ours: requests", requests["ours"], "",
            note=f"{requests['ours_lists']} list pages + {requests['ours'] - requests['ours_lists']} other"),
        Row(m, "ours: records/s", records / wall["ours"], "rec/s"),
        Row(m, "ours: of which inside the run (RUN_START..end)", statistics.median(in_run), "s",
            note=f"last round: {describe_steps(steps)}"),
        Row(m, "(a) fetch floor: plain httpx", wall["floor"], "s", note=f"{requests['floor']} requests"),
        Row(m, "(b) Dagster start-up: same job, 0 records", wall["startup"], "s", note=f"CPU {cpu['startup']:.1f} s"),
        Row(m, "(c) dlt rest_api -> DuckDB", wall["dlt"], "s",
            note=f"{requests['dlt']} requests, CPU {cpu['dlt']:.1f} s"),
        ratio_row(m, "ours / dlt", [o / d for o, d in zip(walls["ours"], walls["dlt"])], 0.25),
        ratio_row(m, "ours / (floor + start-up)",
                  [o / (f + s) for o, f, s in zip(walls["ours"], walls["floor"], walls["startup"])], 1.5),
    )
    bench.note_command("1", job_line(sim, pacing=False))
    bench.note_command("1", "(a) in the harness process: fetch_floor() in benchmarks/run.py, "
                            "GET <path>?page=1..n&size=1000&orderby=Id with Basic auth, .json()")
    bench.note_command("1", "(b) the same job line against: " + empty.command)
    bench.note_command("1", f"(c) NEXUDUS_BASE_URL=<simulator>/api NEXUDUS_USERNAME={USERNAME} "
                            f"NEXUDUS_PASSWORD={PASSWORD} RUNTIME__DLTHUB_TELEMETRY=false "
                            "python benchmarks/dlt_pipeline.py <new.duckdb> <new pipelines dir>")


def measure_incremental(bench: Bench, sim: Simulator) -> None:
    assert bench.synced_50k is not None
    changed: dict[str, int] = {}
    for table, _, _ in ENTITIES:
        total = {"access_tokens": bench.sizes.tokens, "coworker_contracts": bench.sizes.contracts,
                 "coworker_time_passes": bench.sizes.passes}[table]
        changed[table] = len(sim.mutate(table, update=max(1, total // 100))["updated"])
    walls = []
    for attempt in range(1, bench.repeat + 1):
        tag = f" (round {attempt} of {bench.repeat})" if bench.repeat > 1 else ""
        progress(f"3   incremental sync after changing 1% ({changed}), a copy of the synced warehouse{tag}")
        # Each round starts from the same synced state and reads the same changes.
        database, home = bench.fresh("m3-incremental")
        shutil.copy(bench.synced_50k, database)
        sim.reset_stats()
        walls.append(run_job(sim, "m3-incremental", database=database, home=home, pacing=False, timeout=600).seconds)
    seconds = statistics.median(walls)
    stats = sim.stats()
    made = list_requests(stats)
    with warehouse(database) as conn:
        logged = dict(conn.execute(
            "SELECT entity, requests FROM raw._sync_log QUALIFY row_number() OVER "
            "(PARTITION BY entity ORDER BY finished_at DESC) = 1").fetchall())
        fetched = dict(conn.execute(
            "SELECT entity, fetched FROM raw._sync_log QUALIFY row_number() OVER "
            "(PARTITION BY entity ORDER BY finished_at DESC) = 1").fetchall())
    bench.details["3"] = {"changed": changed, "list_requests": made, "sync_log_requests": logged,
                          "fetched": fetched, "all_requests": stats["requests"], "by_path": stats["by_path"],
                          "wall_s": seconds, "walls_s": walls}
    m = "3 incremental, 1% changed"
    for table, _, _ in ENTITIES:
        minimum = math.ceil(changed[table] / PAGE_SIZE) + 1
        bench.add(Row(m, f"{table}: list requests", made[table], "", f"<= {minimum}",
                      "pass" if made[table] <= minimum else "miss",
                      f"{changed[table]} changed, {fetched.get(table)} read; _sync_log says {logged.get(table)}"))
    others = stats["requests"] - sum(made.values())
    events = run_events(home)
    bench.details["3"]["events"] = events
    bare = bare_job_seconds(bench)
    bare_events = bench.details["bare_events"]
    bench.add(Row(m, "other requests in the run", others, "", note="the command catalogue, GET <entity>/commands"),
              Row(m, "wall (CLI job)", seconds, "s", note=f"median of {len(walls)}" if len(walls) > 1 else ""),
              Row(m, "bare three-asset job, same way (median of 3)", bare, "s"),
              Row(m, "ours / bare job", seconds / bare, "", "<= 2", "pass" if seconds / bare <= 2 else "miss"),
              Row(m, "events the run wrote to the instance", events["events"], "",
                  note=f"bare job: {bare_events['events']}; "
                       + ", ".join(f"{k} {v}" for k, v in events.items() if k != "events" and v >= 3)))
    bench.note_command("3", "python benchmarks/run.py --only 3   # full sync, POST /_simulator/mutate "
                            '{"entity": <table>, "update": <1%>} per entity, POST /_simulator/reset-stats, then:')
    bench.note_command("3", job_line(sim, pacing=False).replace("<new file>", "<the synced file>"))


def measure_paced(bench: Bench) -> None:
    sizes = bench.sizes
    with simulator("limits", sizes.tokens, sizes.contracts, sizes.passes, enforce=True, jitter_ms=150) as sim:
        progress("2   our job, pacing on, against a simulator enforcing the published limits, with jitter")
        database, home = bench.fresh("m2-paced")
        sim.reset_stats()
        seconds = run_job(sim, "m2-paced", database=database, home=home, pacing=True, timeout=1800).seconds
        stats = sim.stats()
        expect_rows("our paced job", database, {"access_tokens": sizes.tokens,
                                                "coworker_contracts": sizes.contracts,
                                                "coworker_time_passes": sizes.passes})
        in_run, steps = run_timings(home)
        bench.note_command("2", job_line(sim, pacing=True))
    rate_floor = stats["requests"] * 0.1
    bare = bare_job_seconds(bench)
    bench.details["2"] = {"wall_s": seconds, "in_run_s": in_run, "steps_s": steps, "stats": stats,
                          "rate_floor_s": rate_floor, "bare_s": bare}
    m = f"2 limits enforced, 0-150 ms jitter, {sizes.records:,}"
    limit = 1.25 * (rate_floor + bare)
    bench.add(
        Row(m, "throttled answers (409/429)", stats["throttled"], "", "0",
            "pass" if stats["throttled"] == 0 else "miss", f"of {stats['requests']} requests"),
        Row(m, "wall (CLI job, pacing on)", seconds, "s", f"<= {limit:.1f}",
            "pass" if seconds <= limit else "miss",
            f"{in_run:.1f} s inside the run; target 1.25 x (requests x 100 ms + bare job {bare:.1f} s)"),
        Row(m, "rate floor: requests x 100 ms", rate_floor, "s"),
        Row(m, "wall / (rate floor + bare job)", seconds / (rate_floor + bare), "", "<= 1.25",
            "pass" if seconds <= limit else "miss"),
        Row(m, "API steps / rate floor", step_groups(steps)["api"][1] / rate_floor, "",
            note=f"the steps that call the API: {step_groups(steps)['api'][1]:.1f} s"),
        # Booking each request when its answer is in is what keeps it never early at the server,
        # so a request costs at least 100 ms + margin + the delay on the way in + the server's time.
        Row(m, "API steps per request", step_groups(steps)["api"][1] / stats["requests"] * 1000, "ms",
            note="floor: 100 ms + 10 ms margin + 0-150 ms delay (75 on average) + the server's time"),
    )


def measure_million(bench: Bench, *, memory: bool, insights: bool) -> None:
    """Measurement 4 (peak RSS of a 1M-token sync) and 5 (the insights over its warehouse)."""
    tokens = bench.sizes.big_tokens
    with simulator("1m", tokens, 0, 0) as sim:
        progress(f"4   our job over {tokens:,} access tokens, pacing off, sampling memory" if memory else
                 f"our job over {tokens:,} access tokens first (not measured): measurement 5 needs its warehouse")
        database, home = bench.fresh("m4-1m")
        sim.reset_stats()
        measured = run_job(sim, "m4-1m", database=database, home=home, pacing=False, timeout=3600)
        requests = sim.stats()["requests"]
        expect_rows("our 1M job", database, {"access_tokens": tokens, "coworker_contracts": 0,
                                             "coworker_time_passes": 0})
        in_run, steps = run_timings(home)
        if memory:
            peak_mb = measured.peak_rss_bytes / MB
            bench.details["4"] = {"wall_s": measured.seconds, "peak_rss_mb": peak_mb, "requests": requests,
                                  "own_peak_rss_mb": measured.own_peak_bytes / MB,
                                  "tree_peak_rss_mb": measured.tree_peak_bytes / MB,
                                  "in_run_s": in_run, "steps_s": steps}
            m = f"4 full sync {tokens:,} tokens"
            bench.add(
                Row(m, "peak RSS of the job's processes", peak_mb, "MB", "< 500", "pass" if peak_mb < 500 else "miss",
                    f"job process {measured.own_peak_bytes / MB:.0f} MB, process tree sampled "
                    f"{measured.tree_peak_bytes / MB:.0f} MB"),
                Row(m, "wall (CLI job, pacing off)", measured.seconds, "s",
                    note=f"{requests} requests; access_tokens step {steps.get('access_tokens', 0):.1f} s"),
                Row(m, "records/s", tokens / measured.seconds, "rec/s"),
            )
            bench.note_command("4", job_line(sim, pacing=False) + "   # peak RSS: wait4() ru_maxrss and "
                                    "the sampled sum over the process tree")
        if insights:
            measure_insights(bench, sim, database)


def measure_insights(bench: Bench, sim: Simulator, database: Path) -> None:
    progress("5   materialize group:nexudus_insights over measurement 4's warehouse (CLI)")
    home = bench.fresh("m5-insights")[1]
    measured = run_job(sim, "m5-insights", database=database, home=home, pacing=False, timeout=1800,
                       args=INSIGHTS)
    in_run, steps = run_timings(home)
    bench.details["5"] = {"wall_s": measured.seconds, "in_run_s": in_run, "steps_s": steps}
    slowest = max(steps.items(), key=lambda item: item[1], default=("none", 0.0))
    m = f"5 insights over {bench.sizes.big_tokens:,} rows"
    bench.add(
        Row(m, "asset work (RUN_START..end)", in_run, "s",
            note=f"{len(steps)} steps, sum {sum(steps.values()):.1f} s; slowest {slowest[0]} "
                 f"{slowest[1]:.1f} s; no target stated"),
        Row(m, "Dagster start-up and exit (wall - run)", measured.seconds - in_run, "s"),
    )
    bench.note_command("5", job_line(sim, pacing=False, args=INSIGHTS).replace("<new file>", "<measurement 4's file>"))


def measure_year_of_runs(bench: Bench) -> None:
    """Measurement 6: a sensor tick and the asset page on a SQLite instance holding a year of hourly runs."""
    runs = bench.sizes.year_runs
    with simulator("year", bench.sizes.tokens // 10, bench.sizes.contracts // 10, bench.sizes.passes // 10) as sim:
        progress(f"6   {runs:,} hourly runs on a SQLite instance, then a sensor tick and the asset page")
        database, home = bench.fresh("m6-year")
        env = sim.env(NEXUDUS_DUCKDB_PATH=str(database), NEXUDUS_PACING="off")
        line = run_measured([PYTHON, str(HERE / "year_of_runs.py"), str(home), str(runs)], env=env, cwd=REPO,
                            log=RESULTS / "logs" / "m6-year.log", timeout=3600)
        output = (RESULTS / "logs" / "m6-year.log").read_text().splitlines()
        figures = json.loads(next(text for text in reversed(output) if text.startswith("{")))
    bench.details["6"] = {**figures, "wall_s": line.seconds}
    m = f"6 a year of hourly runs ({runs:,}), SQLite"
    bench.add(
        Row(m, "alert sensor tick, one new run", figures["alert_tick_one_new_run_s"] * 1000, "ms"),
        Row(m, "alert sensor tick, nothing new", figures["alert_tick_nothing_new_s"] * 1000, "ms"),
        Row(m, "rule sensor tick", figures["rule_tick_s"] * 1000, "ms"),
        Row(m, "asset page (GraphQL, access_tokens)", figures["asset_page_s"] * 1000, "ms",
            note=f"first {figures['asset_page_first_s'] * 1000:.0f} ms; {figures['asset_page_materializations']} "
                 f"materializations listed"),
        Row(m, "building the instance", figures["copy_s"], "s",
            note=f"{figures['index_events_per_run']} indexed events a run, copied from one real run"),
    )
    bench.note_command("6", f"NEXUDUS_BASE_URL=<simulator>/api NEXUDUS_USERNAME={USERNAME} "
                            f"NEXUDUS_PASSWORD={PASSWORD} NEXUDUS_PACING=off NEXUDUS_DUCKDB_PATH=<new file> "
                            f"python benchmarks/year_of_runs.py <new DAGSTER_HOME> {runs}")


def copy_warehouse(source: Path, target: Path) -> None:
    """The published file, the working file and the spare beside them, as an hourly run finds them:
    written out to disk long ago, not waiting in memory to be (which the run would pay for)."""
    old, new = WarehouseFiles(source), WarehouseFiles(target)
    for path, copy in ((old.published, new.published), (old.working, new.working), (old.spare, new.spare)):
        if path.exists():
            shutil.copy(path, copy)
    os.sync()


def blocks_that_differ(before: Path, after: Path) -> tuple[int, int]:
    """(blocks of the DuckDB file `after` that differ from `before` at the same place, blocks of
    `after`): what a publish into the spare `before` writes to make it `after`. The file's three
    4 KiB headers count as one block; its blocks of 256 KiB follow them."""
    differ = total = 0
    with before.open("rb") as old, after.open("rb") as new:
        size = 3 * 4096
        while piece := new.read(size):
            total += 1
            differ += old.read(size) != piece
            size = 256 * 1024
    return differ, total


def measure_scaling(bench: Bench, limit: float = 1.3) -> None:
    """Measurement 7: the hourly run's cost against the size of the account, 1% changed in both.

    A warehouse of 1.2M records (1M tokens, 100k contracts, 100k passes) against one of 10k, each
    synced once and run hourly once with nothing changed (not measured), then 1% of every entity
    changed upstream, then the hourly job from a copy of the files, the two sizes alternating
    round by round.
    """
    sizes = {"big": bench.sizes.scaling_big, "small": bench.sizes.scaling_small}
    with simulator("7-big", *sizes["big"]) as big_sim, simulator("7-small", *sizes["small"]) as small_sim:
        sims = {"big": big_sim, "small": small_sim}
        synced: dict[str, Path] = {}
        changed: dict[str, dict[str, int]] = {}
        for name, sim in sims.items():
            progress(f"7   full sync of the {name} account first (not measured)")
            database, home = bench.fresh(f"m7-{name}-setup")
            run_job(sim, f"m7-{name}-setup", database=database, home=home, pacing=False, timeout=3600)
            # An hourly run with nothing changed leaves the files as every later run finds them: the
            # published file, the working file and the spare the next publish writes into.
            progress(f"7   an hourly run of the {name} account with nothing changed (not measured)")
            run_job(sim, f"m7-{name}-warm", database=database, home=home, pacing=False, timeout=1200)
            synced[name] = database
            changed[name] = {
                table: len(sim.mutate(table, update=max(1, total // 100))["updated"])
                for (table, _, _), total in zip(ENTITIES, sizes[name], strict=True)
            }
        walls: dict[str, list[float]] = {"big": [], "small": []}
        cpus: dict[str, list[float]] = {"big": [], "small": []}
        steps: dict[str, dict[str, float]] = {}
        in_run: dict[str, list[float]] = {"big": [], "small": []}
        #: Per round, whether the publish wrote into the spare rather than copying the whole file.
        into_spare: dict[str, list[bool]] = {"big": [], "small": []}
        measured_files: dict[str, Path] = {}
        for attempt in range(1, bench.repeat + 1):
            for name, sim in sims.items():
                progress(f"7   hourly run, {name} account, 1% changed (round {attempt} of {bench.repeat})")
                database, home = bench.fresh(f"m7-{name}")
                copy_warehouse(synced[name], database)
                spare = WarehouseFiles(database).spare.stat().st_ino
                measured = run_job(sim, f"m7-{name}", database=database, home=home, pacing=False, timeout=1200)
                walls[name].append(measured.seconds)
                cpus[name].append(measured.cpu_seconds)
                seconds, steps[name] = run_timings(home)
                in_run[name].append(seconds)
                into_spare[name].append(database.stat().st_ino == spare)
                measured_files[name] = database
        # Every round starts from the same files and the same changes: the last round's stands for all.
        #: (blocks that differ between the spare and the published file, blocks of the published file)
        rewritten = {name: blocks_that_differ(WarehouseFiles(synced[name]).spare, measured_files[name]) for name in sims}
        file_mb = {name: synced[name].stat().st_size / (1 << 20) for name in sims}
    bench.details["7"] = {"sizes": sizes, "changed": changed, "walls_s": walls, "cpu_s": cpus, "in_run_s": in_run,
                          "steps_s": steps, "file_mb": file_mb, "publish_blocks_written": rewritten,
                          "publish_into_spare": into_spare}
    records = {name: sum(counts) for name, counts in sizes.items()}
    m = f"7 hourly run, {records['big']:,} vs {records['small']:,} records"
    median = {name: statistics.median(values) for name, values in walls.items()}
    for name in sims:
        slowest = sorted(steps[name].items(), key=lambda item: -item[1])[:4]
        bench.add(Row(m, f"{name}: wall (CLI job)", median[name], "s",
                      note=f"{sum(sizes[name]):,} records, {file_mb[name]:.0f} MB file, the publish "
                           + f"wrote into the spare in {sum(into_spare[name])} of {len(into_spare[name])} rounds"
                           + f" ({rewritten[name][0]} of its {rewritten[name][1]} blocks differ)"
                           + f", inside the run "
                           f"{statistics.median(in_run[name]):.1f} s; slowest steps "
                           + ", ".join(f"{key} {value:.2f} s" for key, value in slowest)))
    bench.add(ratio_row(m, "large / small", [b / s for b, s in zip(walls["big"], walls["small"], strict=True)], limit))
    # CPU seconds move less than wall time when others compete for the cores.
    cpu_ratios = [b / s for b, s in zip(cpus["big"], cpus["small"], strict=True)]
    bench.add(Row(m, "large / small, CPU seconds of the job's processes", statistics.median(cpu_ratios), "",
                  note="rounds: " + ", ".join(f"{r:.2f}" for r in cpu_ratios)))
    bench.note_command("7", "python benchmarks/run.py --only 7   # a full sync of each account, POST "
                            '/_simulator/mutate {"entity": <table>, "update": <1%>} per entity, then per round:')
    for name, sim in sims.items():
        bench.note_command("7", f"({name}) " + job_line(sim, pacing=False).replace("<new file>", "<a copy of the synced file>"))


#: Records a page of measurement 8's servers, whatever the client asks: a sync of a few thousand
#: records then takes tens of seconds of requests under the published limits.
ACCOUNT_PAGE_CAP = 100
#: The published per-minute window: an account's requests leave it a minute after they were made.
LIMIT_WINDOW_SECONDS = 61


def account_phase(bench: Bench, label: str, sims: dict[str, Simulator], groups: list[list[str]]) -> dict[str, Any]:
    """One deployment (code server, daemon, webserver; SQLite) serving the accounts of `sims`, each
    with an empty warehouse; each group of accounts' syncs is submitted together through GraphQL and
    waited for, one group after the other. Returns each sync's run and its wall time from submission
    to the run's end, by account."""
    from nexudus_assets_tests.deployment import AccountServer, Deployment, write_accounts, write_instance

    directory = bench.work / f"m8-{label}"
    (directory / "data").mkdir(parents=True)
    no_rules = directory / "no_rules.yaml"
    no_rules.write_text("rules: []\n")  # no command runs queue up between the syncs
    write_instance(directory / "dagster_home", postgres=False)
    databases = {name: directory / "data" / f"{name}.duckdb" for name in sims}
    secrets = write_accounts(directory / "accounts.yaml", [
        AccountServer(name, sim.base_url, f"{name}@example.com", PASSWORD,
                      settings={"NEXUDUS_DUCKDB_PATH": str(databases[name]), "NEXUDUS_COMMAND_RULES": str(no_rules)})
        for name, sim in sims.items()
    ])
    never = "0 0 1 1 *"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("NEXUDUS_", "DAGSTER_"))}, **secrets,
           "DAGSTER_HOME": str(directory / "dagster_home"), "NEXUDUS_ACCOUNTS": str(directory / "accounts.yaml"),
           "NEXUDUS_ACROSS_ACCOUNTS_PATH": str(directory / "data" / "across_accounts.duckdb"),
           "NEXUDUS_SYNC_CRON": never, "NEXUDUS_FULL_REFRESH_CRON": never, "NEXUDUS_FRESHNESS_CRON": never,
           "NEXUDUS_ACROSS_ACCOUNTS_CRON": never}
    deployment = Deployment(directory, env)
    results: dict[str, Any] = {}
    try:
        deployment.migrate()
        deployment.start_code_server()
        deployment.start_webserver()
        deployment.wait_for("the code location to load", deployment.location_loaded, 300)
        deployment.start_daemon()
        for group in groups:
            progress(f"8   {label}: {' + '.join(group)}" + (", submitted together" if len(group) > 1 else ""))
            submitted = time.time()
            run_ids = deployment.launch_together([f"{name}__nexudus_sync" for name in group])
            runs = deployment.wait_until_finished(run_ids, 1800)
            for name, run_id in zip(group, run_ids, strict=True):
                run = runs[run_id]
                if run["status"] != "SUCCESS":
                    raise BenchmarkError(f"{name}'s sync ended {run['status']}: {deployment.errors(run_id)[:3]}")
                results[name] = {"wall_s": run["endTime"] - submitted, "in_run_s": run["endTime"] - run["startTime"],
                                 "start": run["startTime"], "end": run["endTime"]}
    except AssertionError as failed:  # a wait of the deployment timed out or a process died
        raise BenchmarkError(str(failed)[:3000]) from None
    finally:
        deployment.stop()
        shutil.copytree(directory, RESULTS / "logs" / f"m8-{label}", ignore=shutil.ignore_patterns("*.duckdb*", "data",
                                                                                                   "dagster_home"),
                        dirs_exist_ok=True)
    for name in sims:
        expect_rows(f"{name}'s sync ({label})", databases[name], bench.details["8"]["expected"][name])
    return results


def measure_accounts(bench: Bench, limit: float = 1.5) -> None:
    """Measurement 8: three accounts on three servers enforcing the published limits, pacing on;
    each account's sync alone through the daemon, then the three submitted together."""
    names = ("brand_a", "brand_b", "brand_c")
    sizes = dict(zip(names, bench.sizes.accounts, strict=True))
    bench.details["8"] = {"expected": {name: dict(zip([table for table, _, _ in ENTITIES], counts, strict=True))
                                       for name, counts in sizes.items()}}
    with ExitStack() as stack:
        sims: dict[str, Simulator] = {}
        for seed, (name, (tokens, contracts, passes)) in enumerate(sizes.items(), start=21):
            progress(f"8   {name}'s server: {tokens:,} tokens, {contracts:,} contracts, {passes:,} passes, "
                     f"{ACCOUNT_PAGE_CAP} a page, enforcing the published limits")
            sims[name] = stack.enter_context(Simulator(
                tokens=tokens, contracts=contracts, passes=passes, seed=seed, enforce_limits=True,
                log=RESULTS / "logs" / f"simulator-8-{name}.log",
                arguments=["--page-cap", str(ACCOUNT_PAGE_CAP), "--username", f"{name}@example.com"]))
        alone = account_phase(bench, "alone", sims, [[name] for name in names])
        requests = {name: sim.stats()["requests"] for name, sim in sims.items()}
        throttled = {name: sim.stats()["throttled"] for name, sim in sims.items()}
        for sim in sims.values():
            sim.reset_stats()
        # Each account's requests of its run alone must have left the server's per-minute window.
        rest = max(result["end"] for result in alone.values()) + LIMIT_WINDOW_SECONDS - time.time()
        if rest > 0:
            progress(f"8   waiting {rest:.0f} s for the published per-minute windows to empty")
            time.sleep(rest)
        together = account_phase(bench, "together", sims, [list(names)])
        throttled_together = {name: sim.stats()["throttled"] for name, sim in sims.items()}
    first_submitted = min(r["end"] - r["wall_s"] for r in together.values())
    wall_together = max(r["end"] for r in together.values()) - first_submitted
    slowest = max(alone.values(), key=lambda result: result["wall_s"])
    slowest_name = next(name for name, result in alone.items() if result is slowest)
    overlap = min(r["end"] for r in together.values()) - max(r["start"] for r in together.values())
    ratio = wall_together / slowest["wall_s"]
    bench.details["8"].update({"alone": alone, "together": together, "requests_alone": requests,
                               "throttled_alone": throttled, "throttled_together": throttled_together})
    m = f"8 three accounts, {sum(bench.sizes.accounts[0]):,} records each, limits enforced"
    bench.add(
        Row(m, "each alone: wall (submitted to ended)", slowest["wall_s"], "s",
            note=f"slowest {slowest_name}; " + ", ".join(f"{n} {r['wall_s']:.1f} s ({requests[n]} requests)"
                                                      for n, r in alone.items())),
        Row(m, "the three together: wall (submitted to the last ended)", wall_together, "s",
            note=", ".join(f"{n} {r['wall_s']:.1f} s" for n, r in together.items())
                 + f"; all three running for {overlap:.1f} s"),
        Row(m, "together / slowest alone", ratio, "", f"<= {limit}", "pass" if ratio <= limit else "miss"),
        Row(m, "throttled answers (409/429)", sum(throttled.values()) + sum(throttled_together.values()), "", "0",
            "pass" if not any(throttled.values()) and not any(throttled_together.values()) else "miss"),
    )
    bench.note_command("8", "python benchmarks/run.py --only 8   # per account: python -m nexudus_assets.simulator "
                            f"--port 0 --seed <21|22|23> --tokens/--contracts/--passes <sizes> --page-cap "
                            f"{ACCOUNT_PAGE_CAP} --username <name>@example.com --enforce-limits")
    bench.note_command("8", "NEXUDUS_ACCOUNTS=<accounts file: the three servers, pacing on> DAGSTER_HOME=<new dir "
                            "with dagster.yaml>: dagster code-server start, dagster-daemon run, dagster-webserver; "
                            "GraphQL launchMultipleRuns of <name>__nexudus_sync: each alone, then a new deployment "
                            "with empty warehouses and the three together")


# ----------------------------------------------------------------------------- report


def print_table(rows: list[Row]) -> None:
    header = ("measurement", "figure", "target", "verdict")
    cells = [(r.measurement, r.shown(), r.target or "-", r.verdict or "-") for r in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(4)]
    rule = "-+-".join("-" * w for w in widths)
    print()
    for line in [header, None, *cells]:
        print(rule if line is None else " | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10x smaller data, to check the harness")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8", help="comma-separated measurement numbers")
    parser.add_argument("--repeat", type=int, help="rounds of measurement 1, median reported (default 3; 1 with --quick)")
    args = parser.parse_args(argv)
    only = {int(part) for part in args.only.split(",") if part.strip()}
    sizes = QUICK if args.quick else FULL
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    errors = 0
    with tempfile.TemporaryDirectory(prefix="nexudus-bench-") as work:
        bench = Bench(sizes=sizes, work=Path(work), repeat=max(1, args.repeat or (1 if args.quick else 3)))
        steps: list[tuple[set[int], str, Callable[[], None]]] = [
            ({1, 3}, "1/3", lambda: measure_sync_50k(bench, full=1 in only, incremental=3 in only)),
            ({2}, "2", lambda: measure_paced(bench)),
            ({4, 5}, "4/5", lambda: measure_million(bench, memory=4 in only, insights=5 in only)),
            ({6}, "6", lambda: measure_year_of_runs(bench)),
            ({7}, "7", lambda: measure_scaling(bench)),
            ({8}, "8", lambda: measure_accounts(bench)),
        ]
        for numbers, label, step in steps:
            if not numbers & only:
                continue
            try:
                step()
            except Exception as failure:  # one broken measurement must not hide the others
                errors += 1
                progress(f"measurement {label} failed: {failure}")
                bench.add(Row(label, "could not be measured", None, "", verdict="error",
                              note=str(failure).splitlines()[0]))
    print_table(bench.rows)
    print("\nTo reproduce (python = .venv/bin/python, from the repo root):")
    for measurement, lines in bench.commands.items():
        for line in lines:
            print(f"  [{measurement}] {line}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps({
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "only": sorted(only),
        "sizes": asdict(sizes),
        "rows": [asdict(row) for row in bench.rows],
        "details": bench.details,
        "commands": bench.commands,
    }, indent=2, default=str))
    misses = sum(row.verdict == "miss" for row in bench.rows)
    print(f"\n{misses} target(s) missed, {errors} measurement(s) failed; figures in {RESULTS / 'latest.json'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
