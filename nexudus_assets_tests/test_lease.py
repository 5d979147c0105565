"""The account lease: one process at a time, shared by the threads of a process, dropped on death."""

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from nexudus_assets.nexudus import ACCESS_TOKENS, RateLimits
from nexudus_assets.nexudus.lease import AccountLease, LeaseDirectoryError, LeaseTimeoutError

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
    # The kill frees the claim at once; the longer timeout only spares a loaded machine a false failure.
    taking_over = AccountLease(BASE_URL, USER, directory=tmp_path, timeout=30, poll=0.02)
    taking_over.acquire()
    assert taking_over.holding
    taking_over.release()


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


def as_other_user(*command: str) -> None:
    """Runs `command` as `nobody`: the other local user of these tests."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("acting as a second local user needs root and setpriv")
    if os.stat(sys.executable).st_mode & 0o005 != 0o005:
        pytest.skip("the interpreter is not usable by another user")
    subprocess.run(
        ["setpriv", f"--reuid={OTHER_USER}", f"--regid={OTHER_USER}", "--clear-groups", *command],
        check=True,
        timeout=60,
    )


OTHER_USER = 65534  # nobody


@pytest.fixture
def shared_temp():
    """A directory like /tmp: anyone may create entries, only their owner may remove them."""
    # Not under pytest's own base directory, which only its user may enter.
    shared = Path(tempfile.mkdtemp(prefix="shared-temp-"))
    shared.chmod(0o1777)
    yield shared
    shutil.rmtree(shared)


@pytest.fixture
def precious(tmp_path):
    """A file only its owner may read or write, which a hijacked lock would truncate."""
    secret = tmp_path / "root-only"
    secret.write_text("keep me\n")
    secret.chmod(0o600)
    return secret


def test_a_directory_another_user_prepared_is_refused_and_its_links_not_followed(shared_temp, precious):
    planted = shared_temp / f"nexudus-assets-leases-{os.geteuid()}"
    claim = lease(planted)
    as_other_user("sh", "-c", f'mkdir -m 0777 "{planted}" && ln -s "{precious}" "{claim.path}"')

    with pytest.raises(LeaseDirectoryError, match=re.escape(str(planted)) + ".*belongs to uid 65534"):
        claim.acquire()
    assert precious.read_text() == "keep me\n"
    assert not claim.holding


def test_a_lease_directory_that_is_a_link_is_refused(shared_temp, tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    planted = shared_temp / "leases"
    as_other_user("ln", "-s", str(ours), str(planted))

    with pytest.raises(LeaseDirectoryError, match=re.escape(str(planted)) + " is a symbolic link"):
        lease(planted).acquire()
    assert list(ours.iterdir()) == []


def test_a_lock_file_that_is_a_link_or_a_second_name_is_not_written_through(tmp_path, precious):
    directory = tmp_path / "leases"
    directory.mkdir(mode=0o700)
    claim = lease(directory)
    claim.path.symlink_to(precious)
    with pytest.raises(LeaseDirectoryError, match="symbolic link there is never followed"):
        claim.acquire()
    claim.path.unlink()
    os.link(precious, claim.path)
    with pytest.raises(LeaseDirectoryError, match="one name"):
        claim.acquire()
    assert precious.read_text() == "keep me\n"


def test_a_directory_open_to_others_is_refused(tmp_path):
    directory = tmp_path / "leases"
    directory.mkdir()
    directory.chmod(0o733)
    with pytest.raises(LeaseDirectoryError, match="mode 0733, not 0700"):
        lease(directory).acquire()


def test_each_user_gets_a_private_directory_of_their_own(shared_temp, monkeypatch):
    # The other user's own lease, in the same shared temp directory, works and stays theirs.
    script = (
        "import os, tempfile; tempfile.tempdir = os.environ['SHARED'];"
        "from nexudus_assets.nexudus.lease import AccountLease;"
        f"AccountLease({BASE_URL!r}, {USER!r}).acquire()"
    )
    monkeypatch.setenv("SHARED", str(shared_temp))
    as_other_user(sys.executable, "-c", script)
    theirs = shared_temp / f"nexudus-assets-leases-{OTHER_USER}"
    assert (theirs.stat().st_uid, stat.S_IMODE(theirs.stat().st_mode)) == (OTHER_USER, 0o700)
    assert [path.stat().st_mode & 0o777 for path in theirs.iterdir()] == [0o600]
