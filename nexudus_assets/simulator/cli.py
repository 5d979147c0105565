"""`nexudus-simulator`: run the simulator as a process until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import signal
import threading
from collections.abc import Sequence

from nexudus_assets.simulator.core import Simulator
from nexudus_assets.simulator.dialect import DIALECTS, Dialect
from nexudus_assets.simulator.faults import HOSTILE_IDS, Faults
from nexudus_assets.simulator.live import LiveChanges
from nexudus_assets.simulator.process import LISTENING_ON
from nexudus_assets.simulator.server import SimulatorServer
from nexudus_assets.simulator.sign_in import DEFAULT_PASSWORD, DEFAULT_USERNAME


def _hostile_id_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - HOSTILE_IDS.keys())
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; known: {', '.join(HOSTILE_IDS)}")
    return names


def _changes_per_minute(text: str) -> float:
    rate = float(text)
    if not rate >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more changes a minute, not {text}")
    return rate


def _dialect(args: argparse.Namespace) -> Dialect:
    """The named dialect with the switches given on the command line."""
    switches = {
        name: getattr(args, name)
        for name in ("pages_from_requested_size", "long_ids", "tick_fractions", "business_dates_utc", "lone_surrogate")
        if getattr(args, name)
    }
    if args.page_cap is not None:
        switches["max_page_size"] = args.page_cap
    if args.filter_utc_offset_hours is not None:
        switches["filter_utc_offset_hours"] = args.filter_utc_offset_hours
    return dataclasses.replace(DIALECTS[args.dialect], **switches)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexudus-simulator", description="A Nexudus-compatible API with generated data."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--contracts", type=int, default=50)
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--now", type=dt.datetime.fromisoformat, help="ISO time the data is generated around")
    parser.add_argument("--list-shape", choices=("legacy", "modern"), default="legacy")
    parser.add_argument(
        "--dialect",
        choices=sorted(DIALECTS),
        default="reference",
        help="answer as another Nexudus-compatible server would (see simulator/dialect.py)",
    )
    parser.add_argument("--page-cap", type=int, help="serve at most this many records a page, whatever is asked")
    parser.add_argument(
        "--pages-from-requested-size",
        action="store_true",
        help="compute TotalPages and HasNextPage from the size asked, not the size served",
    )
    parser.add_argument("--long-ids", action="store_true", help="Ids beyond 2^31 in interleaved blocks")
    parser.add_argument("--tick-fractions", action="store_true", help="CreatedOn/UpdatedOn with 7 fractional digits")
    parser.add_argument("--business-dates-utc", action="store_true", help="business dates with a Z")
    parser.add_argument(
        "--filter-utc-offset-hours", type=int, help="read range filters in this zone (-5: UTC-5 local time)"
    )
    parser.add_argument("--lone-surrogate", action="store_true", help="one token's description cut mid-emoji")
    parser.add_argument("--username", default=DEFAULT_USERNAME)
    parser.add_argument("--password", default=DEFAULT_PASSWORD)
    parser.add_argument("--totp-secret", help="base32; sign-in then needs a TOTP code")
    parser.add_argument("--enforce-limits", action="store_true", help="answer 409 past the published limits")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="waited before the rate limiter counts")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--malformed-rate", type=float, default=0.0)
    parser.add_argument("--html-rate", type=float, default=0.0)
    parser.add_argument("--endless-pages", action="store_true", help="lists never end (fresh Ids on every page)")
    parser.add_argument(
        "--drift-between-pages",
        type=int,
        default=0,
        help="this many times, delete a record on the page just served and insert one after it",
    )
    parser.add_argument("--growing-total", action="store_true", help="add a page of records after every page")
    parser.add_argument("--trickle-body-seconds", type=float, default=0.0, help="send 200 bodies a byte at a time")
    parser.add_argument(
        "--hostile-ids",
        type=_hostile_id_names,
        default=[],
        help=f"comma-separated, serve list records with these Ids: {', '.join(HOSTILE_IDS)}",
    )
    parser.add_argument(
        "--schema-drift", action="store_true", help="list records carry a number as text with its unit (10 min)"
    )
    parser.add_argument("--nesting-depth", type=int, default=0, help="nest a field of each list page this deep")
    _add_live_account_switches(parser)
    parser.add_argument(
        "--live-changes",
        type=_changes_per_minute,
        default=0.0,
        metavar="PER_MINUTE",
        help="the account changes as time passes, this many changes a minute: token minutes used, contracts "
        "renewed, cancelled and started, passes bought and used (0: it stands still)",
    )
    return parser


def _add_live_account_switches(parser: argparse.ArgumentParser) -> None:
    """Behaviour seen in live accounts: long throttling, bursts of the generic error, missing roles, one token."""
    parser.add_argument(
        "--throttle-stretch-seconds", type=float, default=0.0, help="throttle every request for this long"
    )
    parser.add_argument("--throttle-stretch-status", type=int, choices=(409, 429), default=409)
    parser.add_argument(
        "--throttle-wait-in-body", action="store_true", help="no Retry-After: the wait only in the body"
    )
    parser.add_argument("--error-burst", type=int, default=0, help="the next N requests answer the generic error")
    parser.add_argument("--error-burst-status", type=int, choices=(400, 500), default=500)
    parser.add_argument(
        "--denied-entities",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=[],
        help="comma-separated entity names (CoworkerTimePass) whose endpoints answer 401",
    )
    parser.add_argument(
        "--one-token-per-client-id",
        action="store_true",
        help="a sign-in voids the tokens issued before to its client_id, as live accounts do",
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    faults = Faults(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        error_rate=args.error_rate,
        throttle_rate=args.throttle_rate,
        drop_rate=args.drop_rate,
        malformed_rate=args.malformed_rate,
        html_rate=args.html_rate,
        endless_pages=args.endless_pages,
        drift_between_pages=args.drift_between_pages,
        growing_total=args.growing_total,
        trickle_body_seconds=args.trickle_body_seconds,
        hostile_ids=tuple(args.hostile_ids),
        nesting_depth=args.nesting_depth,
        throttle_stretch_seconds=args.throttle_stretch_seconds,
        throttle_stretch_status=args.throttle_stretch_status,
        throttle_wait_in_body=args.throttle_wait_in_body,
        error_burst=args.error_burst,
        error_burst_status=args.error_burst_status,
        denied_entities=tuple(args.denied_entities),
        schema_drift=args.schema_drift,
        seed=args.seed,
    )
    simulator = Simulator(
        seed=args.seed,
        tokens=args.tokens,
        contracts=args.contracts,
        passes=args.passes,
        now=args.now,
        list_shape=args.list_shape,
        username=args.username,
        password=args.password,
        totp_secret=args.totp_secret,
        one_token_per_client_id=args.one_token_per_client_id,
        enforce_limits=args.enforce_limits,
        faults=faults,
        dialect=_dialect(args),
        live_changes=LiveChanges(per_minute=args.live_changes),
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with SimulatorServer(simulator, host=args.host, port=args.port) as server:
        print(f"{LISTENING_ON} {server.base_url}", flush=True)
        # A timed wait lets the signal handler run promptly on every platform.
        while not stop.wait(0.5):
            pass


if __name__ == "__main__":
    main()
