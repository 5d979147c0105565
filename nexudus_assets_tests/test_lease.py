"""The account lease: one process at a time, shared by the threads of a process, dropped on death."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from nexudus_assets.nexudus import ACCESS_TOKENS, RateLimits
from nexudus_assets.nexudus.lease import AccountLease, LeaseTimeoutError

BASE_URL = "http://127.0.0.1:1/api"
USER = "ops@example.com"
HOLDER = f"""
import sys, time
from pathlib import Path
from nexudus_assets.nexudus.lease import AccountLease
AccountLease({BASE_URL!r}, {USER!r}, directory=Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(60)
"""


def hold_in_another_process(directory) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def lease(directory, **settings) -> AccountLease:
    return AccountLease(BASE_URL, USER, directory=directory, poll=0.02, **settings)


def test_another_process_waits_names_the_holder_and_takes_over_once_the_holder_is_killed(tmp_path):
    holder = hold_in_another_process(tmp_path)
    # The same account however its URL and user are spelled.
    waiting = AccountLease(BASE_URL + "/", USER.upper(), directory=tmp_path, timeout=0.3, poll=0.02)
    try:
        with pytest.raises(LeaseTimeoutError, match=f"pid {holder.pid}"):
            waiting.acquire()
        assert not waiting.holding
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert waiting.acquire() < 0.3
    waiting.release()


TRY_ONCE = f"""
import sys
from pathlib import Path
from nexudus_assets.nexudus.lease import AccountLease, LeaseTimeoutError
try:
    AccountLease({BASE_URL!r}, {USER!r}, directory=Path(sys.argv[1]), timeout=0.2, poll=0.02).acquire()
    print("claimed")
except LeaseTimeoutError:
    print("refused")
"""


def another_process_tries(directory) -> str:
    done = subprocess.run([sys.executable, "-c", TRY_ONCE, str(directory)], capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def test_the_threads_of_one_process_share_the_claim_until_the_last_lets_go(tmp_path):
    first, second = lease(tmp_path), lease(tmp_path)
    first.acquire()
    thread = threading.Thread(target=second.acquire)
    thread.start()
    thread.join(timeout=2)
    assert second.holding, "a second holder in the same process waited on its own process"
    first.release()
    assert another_process_tries(tmp_path) == "refused"
    second.release()
    assert another_process_tries(tmp_path) == "claimed"


def test_the_lock_file_does_not_name_the_user_and_says_who_holds_it(tmp_path):
    claim = AccountLease("https://spaces.nexudus.com/api", "secret.person@example.com", directory=tmp_path)
    claim.acquire()
    assert "secret" not in claim.path.name
    assert claim.path.read_text() == f"pid {os.getpid()}"
    claim.release()


def test_only_a_pacing_client_claims_the_account_and_closing_lets_go(running):
    unpaced = running.client()
    unpaced.list_page(ACCESS_TOKENS)
    assert unpaced._lease is None
    with running.client(limits=RateLimits()) as paced:
        paced.list_page(ACCESS_TOKENS)
        assert paced._lease is not None and paced._lease.holding
    assert not paced._lease.holding
