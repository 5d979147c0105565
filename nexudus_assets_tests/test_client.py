"""The client against the simulator over real HTTP on 127.0.0.1."""

import datetime as dt
import logging
import math
import ssl
import time

import httpx
import pytest
from pydantic import SecretStr

from nexudus_assets.nexudus import (
    ACCESS_TOKENS,
    COWORKER_CONTRACTS,
    COWORKER_TIME_PASSES,
    ENTITIES,
    AuthenticationError,
    NexudusError,
    NotFoundError,
    RateLimits,
    RequestRefusedError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    StaleRecordError,
    TransportError,
    UncertainOutcomeError,
    Window,
)
from nexudus_assets.nexudus.auth import FALLBACK_TOKEN_LIFETIME, BearerAuth, Credentials, token_lifetime
from nexudus_assets.nexudus.client import _verified_tls
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets.simulator import limits as server_limits


def api_requests(sim, suffix: str, method: str = "GET") -> list:
    return [entry for entry in sim.request_log if entry[0] == method and entry[1].endswith(suffix)]


def comparable(record):
    return record.model_dump(exclude=set(record.display_fields))


# -- lists and paging ------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 1000, 1001])
def test_iteration_yields_every_record_once_and_stops_at_the_last_page(start_simulator, count):
    running = start_simulator(seed=1, tokens=count)
    with running.client() as client:
        records = list(client.iter_records(ACCESS_TOKENS))
    assert [r.id for r in records] == [r["Id"] for r in running.sim.records(ACCESS_TOKENS)]
    # A list of several pages is walked twice: the second pass sees that nothing moved past the first.
    pages = max(1, math.ceil(count / 1000))
    assert client.stats.requests == (pages if pages == 1 else 2 * pages)


@pytest.mark.parametrize("shape", ["legacy", "modern"])
def test_both_list_shapes_give_the_records_a_single_get_gives(start_simulator, shape):
    running = start_simulator(seed=5, tokens=5, contracts=5, passes=5, list_shape=shape)
    with running.client() as client:
        for entity in ENTITIES:
            listed = list(client.iter_records(entity))
            assert len(listed) == 5
            for record in listed:
                assert comparable(record) == comparable(client.get(entity, record.id))
    contract = next(iter(client_records(running, COWORKER_CONTRACTS)))
    assert contract.tariff_name and contract.tariff_id and contract.coworker_full_name


def client_records(running, entity):
    with running.client() as client:
        return list(client.iter_records(entity))


def test_small_pages_walk_the_whole_list(running):
    with running.client(page_size=7) as client:
        records = list(client.iter_records(ACCESS_TOKENS))
    assert len(records) == 30
    assert client.stats.requests == 2 * 5


def test_paging_survives_records_deleted_and_inserted_while_it_walks(start_simulator):
    running = start_simulator(seed=2, tokens=50)
    sim = running.sim
    before = [r["Id"] for r in sim.records(ACCESS_TOKENS)]
    inserted: list[int] = []

    def drift(entity, page):
        if page == 2 and not inserted:
            sim.delete(ACCESS_TOKENS, before[:3])  # already read: every later record shifts left
            inserted.extend(sim.insert(ACCESS_TOKENS, count=2))

    sim.on_list_page = drift
    with running.client(page_size=10) as client:
        seen = [r.id for r in client.iter_records(ACCESS_TOKENS)]
    # The step back re-reads a page, and a record read twice comes twice (the latest copy wins).
    assert len(seen) - len(set(seen)) <= 10
    now = {r["Id"] for r in sim.records(ACCESS_TOKENS)}
    assert now <= set(seen), f"skipped: {sorted(now - set(seen))}"
    assert set(inserted) <= set(seen)


def test_equality_and_relation_filters(running):
    sim = running.sim
    first = sim.records(ACCESS_TOKENS)[0]
    with running.client() as client:
        by_code = list(client.iter_records(ACCESS_TOKENS, filters={"AccessCode": first["AccessCode"]}))
        by_business = list(client.iter_records(ACCESS_TOKENS, filters={"BusinessId": first["BusinessId"]}))
    assert [r.id for r in by_code] == [first["Id"]]
    assert [r.id for r in by_business] == [
        r["Id"] for r in sim.records(ACCESS_TOKENS) if r["BusinessId"] == first["BusinessId"]
    ]
    assert "AccessToken_Business" in api_requests(sim, "accesstokens")[-1][2]


def test_range_filter_sends_minute_precision_and_includes_that_minute(running):
    sim = running.sim
    changed = [r["Id"] for r in sim.records(ACCESS_TOKENS)][:3]
    sim.update(ACCESS_TOKENS, changed, {"Description": "changed"})
    updated_on = dt.datetime.fromisoformat(sim.get(ACCESS_TOKENS, changed[0])["UpdatedOn"].replace("Z", "+00:00"))
    since = updated_on.replace(second=59)
    with running.client() as client:
        found = [r.id for r in client.iter_records(ACCESS_TOKENS, ranges={"UpdatedOn": (since, None)})]
        low_minutes = list(client.iter_records(ACCESS_TOKENS, ranges={"MinutesLeft": (None, 59)}))
    assert sorted(found) == sorted(changed)
    query = api_requests(sim, "accesstokens")[-2][2]
    assert query["from_AccessToken_UpdatedOn"] == since.strftime("%Y-%m-%dT%H:%M")
    assert {r.id for r in low_minutes} == {r["Id"] for r in sim.records(ACCESS_TOKENS) if r["MinutesLeft"] <= 59}


def test_find_by_ids_chunks_long_id_lists(start_simulator):
    running = start_simulator(seed=4, tokens=250)
    wanted = [r["Id"] for r in running.sim.records(ACCESS_TOKENS)]
    with running.client() as client:
        found = client.find_by_ids(ACCESS_TOKENS, [*wanted, 1])
    assert sorted(r.id for r in found) == sorted(wanted)
    assert client.stats.requests == 3


def test_get_one_and_not_found(running):
    record = running.sim.records(COWORKER_TIME_PASSES)[4]
    with running.client() as client:
        assert client.get(COWORKER_TIME_PASSES, record["Id"]).time_pass_id == record["TimePassId"]
        with pytest.raises(NotFoundError, match="Not found"):
            client.get(COWORKER_TIME_PASSES, 1)


# -- writes ----------------------------------------------------------------------------------


def test_create_returns_the_new_id_and_invalid_data_names_the_field(running):
    business = running.sim.records(ACCESS_TOKENS)[0]["BusinessId"]
    with running.client() as client:
        created = client.create(
            ACCESS_TOKENS, {"BusinessId": business, "AccessCode": "NEW00001", "MinutesIncluded": 90}
        )
        with pytest.raises(RequestRefusedError) as refused:
            client.create(ACCESS_TOKENS, {"BusinessId": business, "MinutesIncluded": 90})
    assert running.sim.get(ACCESS_TOKENS, created.record_id)["AccessCode"] == "NEW00001"
    assert [e.property_name for e in refused.value.errors] == ["AccessCode"]
    assert "AccessCode" in str(refused.value)


def test_update_changes_one_field_and_keeps_every_other(running):
    sim = running.sim
    record = next(r for r in sim.records(COWORKER_CONTRACTS) if r["Notes"] and r["Price"] is not None)
    with running.client() as client:
        client.update(COWORKER_CONTRACTS, record["Id"], {"Quantity": 7})
    after = sim.get(COWORKER_CONTRACTS, record["Id"])
    assert after["Quantity"] == 7
    for field in COWORKER_CONTRACTS.put_fields:
        if field != "Quantity":
            assert after[field] == record[field], field


def test_update_refuses_a_record_changed_since_it_was_read(running):
    sim = running.sim
    record_id = sim.records(ACCESS_TOKENS)[0]["Id"]
    with running.client() as client:
        read = client.get(ACCESS_TOKENS, record_id)
        sim.update(ACCESS_TOKENS, [record_id], {"Description": "edited by someone else"})
        with pytest.raises(StaleRecordError):
            client.update(ACCESS_TOKENS, read, {"MinutesIncluded": 5})
        with pytest.raises(ValueError, match="MinutesLeft"):
            client.update(ACCESS_TOKENS, record_id, {"MinutesLeft": 5})
    assert sim.get(ACCESS_TOKENS, record_id)["MinutesIncluded"] != 5
    assert not api_requests(sim, "accesstokens", "PUT")


def test_delete_where_documented_only(running):
    sim = running.sim
    token_id = sim.records(ACCESS_TOKENS)[0]["Id"]
    contract_id = sim.records(COWORKER_CONTRACTS)[0]["Id"]
    with running.client() as client:
        client.delete(ACCESS_TOKENS, token_id)
        with pytest.raises(NexudusError, match="no DELETE"):
            client.delete(COWORKER_CONTRACTS, contract_id)
    assert sim.get(ACCESS_TOKENS, token_id) is None
    assert sim.get(COWORKER_CONTRACTS, contract_id) is not None


def test_commands_catalogue_and_a_successful_command(running):
    sim = running.sim
    tokens = sim.records(ACCESS_TOKENS)[:2]
    with running.client() as client:
        catalogue = {c.key: c for c in client.commands(ACCESS_TOKENS)}
        add = next(
            c
            for c in catalogue.values()
            if c.requires_parameters and not c.applies_only_to_one_entity and not c.applies_only_to_two_entities
        )
        parameter = add.requires_parameters[0]
        client.run_command(
            ACCESS_TOKENS,
            add.key,
            [t["Id"] for t in tokens],
            [{"Name": parameter.name, "Type": parameter.type, "Value": 30}],
        )
    assert all(c.key for c in catalogue.values())
    assert sim.commands_run[-1]["was_successful"] is True
    assert [sim.get(ACCESS_TOKENS, t["Id"])["UpdatedOn"] != t["UpdatedOn"] for t in tokens] == [True, True]


def test_a_command_answered_was_successful_false_raises_and_is_not_retried(running):
    sim = running.sim
    token_id = sim.records(ACCESS_TOKENS)[0]["Id"]
    sim.faults.failing_command_ids = {token_id}
    with running.client() as client:
        command = client.commands(ACCESS_TOKENS)[0]
        parameters = [{"Name": p.name, "Type": p.type, "Value": 1} for p in command.requires_parameters]
        ids = [token_id, sim.records(ACCESS_TOKENS)[1]["Id"]] if command.applies_only_to_two_entities else [token_id]
        with pytest.raises(RequestRefusedError) as failed:
            client.run_command(ACCESS_TOKENS, command.key, ids, parameters)
    assert failed.value.answer.was_successful is False
    assert len(api_requests(sim, "runcommand", "POST")) == 1


# -- auth ------------------------------------------------------------------------------------


def test_basic_auth_with_a_wrong_password_is_an_authentication_error(running):
    with running.client(password="wrong") as client, pytest.raises(AuthenticationError) as refused:
        client.get(ACCESS_TOKENS, 1)
    assert refused.value.status_code == 401
    assert "wrong" not in str(refused.value)


class SteppedClock:
    """Wall-clock time plus whatever a test adds: a token's lifetime passes without waiting it out."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


def test_bearer_signs_in_once_and_refreshes_before_expiry(start_simulator):
    running = start_simulator(seed=6, tokens=3, access_token_ttl=120)
    clock = SteppedClock()
    session = BearerAuth(Credentials(DEFAULT_USERNAME, SecretStr(DEFAULT_PASSWORD)), clock=clock)
    with running.client(session=session) as client:
        list(client.iter_records(ACCESS_TOKENS))
        list(client.iter_records(ACCESS_TOKENS))
        clock.ahead = 110.0  # inside the last tenth of the token's life: time to refresh
        list(client.iter_records(ACCESS_TOKENS))
    statuses = [entry[3] for entry in running.sim.request_log]
    token_requests = api_requests(running.sim, "/token", "POST")
    assert len(token_requests) == 2
    assert 401 not in statuses
    assert (session.password_grants, client.stats.password_grants) == (1, 1)


@pytest.mark.parametrize("expires_in", [None, "soon", -5, 0, 30])
def test_an_unusable_token_lifetime_falls_back_to_an_hour_with_a_warning(expires_in, caplog):
    answer = {"access_token": "a", "refresh_token": "r", "expires_in": expires_in}
    session = BearerAuth(Credentials("someone@example.com", SecretStr("pw")), clock=lambda: 0.0)
    posts = []

    def post(form, headers):
        posts.append(form["grant_type"])
        return 200, answer

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            session.headers(post)
    assert posts == ["password"]  # not a sign-in before every call
    assert "expires_in" in caplog.text
    assert token_lifetime(expires_in) == FALLBACK_TOKEN_LIFETIME


def test_bearer_signs_in_again_once_after_a_401(start_simulator):
    running = start_simulator(seed=6, tokens=3)
    with running.client(auth="bearer") as client:
        list(client.iter_records(ACCESS_TOKENS))
        running.sim.revoke_tokens()
        records = list(client.iter_records(ACCESS_TOKENS))
    assert len(records) == 3
    assert [entry[3] for entry in running.sim.request_log].count(401) == 1


def test_two_factor_accounts_need_the_totp_secret(start_simulator):
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    running = start_simulator(seed=6, tokens=2, totp_secret=secret)
    with running.client(auth="bearer", totp=secret) as client:
        assert len(list(client.iter_records(ACCESS_TOKENS))) == 2
    with running.client(auth="bearer") as client, pytest.raises(AuthenticationError, match="NEXUDUS_TOTP"):
        client.get(ACCESS_TOKENS, 1)


# -- throttling, pacing, retries -------------------------------------------------------------


def test_throttling_answers_are_waited_out_as_retry_after_says(start_simulator):
    running = start_simulator(seed=7, tokens=3, enforce_limits=True)
    started = time.monotonic()
    with running.client() as client:  # no client-side pacing: the server's 409s must be honoured
        for _ in range(4):
            assert client.get(ACCESS_TOKENS, running.sim.records(ACCESS_TOKENS)[0]["Id"])
    assert client.stats.throttled >= 1
    assert running.sim.stats["throttled"] == client.stats.throttled
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was waited, not retried at once


def test_pacing_keeps_a_burst_under_the_published_limits(start_simulator):
    running = start_simulator(seed=7, tokens=3, enforce_limits=True)
    record_id = running.sim.records(ACCESS_TOKENS)[0]["Id"]
    with running.client(limits=RateLimits()) as client:
        for _ in range(25):
            client.get(ACCESS_TOKENS, record_id)
    assert running.sim.stats["throttled"] == 0
    assert client.stats.throttled == 0


def test_server_errors_are_retried_a_bounded_number_of_times(running):
    running.sim.faults.error_rate = 1.0
    with running.client() as client, pytest.raises(ServerError, match="4 attempts"):
        client.get(ACCESS_TOKENS, 1)
    assert len(running.sim.request_log) == 4


def test_transient_faults_are_retried_until_the_answer_comes(start_simulator):
    running = start_simulator(seed=8, tokens=300)
    running.sim.faults.error_rate = 0.2
    running.sim.faults.drop_rate = 0.1
    with running.client(
        page_size=25, retry=RetryPolicy(max_attempts=10, backoff_initial=0.01, backoff_max=0.02)
    ) as client:
        records = list(client.iter_records(ACCESS_TOKENS))
    assert len(records) == 300
    assert client.stats.retries > 0


def test_dropped_connections_on_reads_give_a_transport_error_after_retries(running):
    running.sim.faults.drop_rate = 1.0
    with running.client() as client, pytest.raises(TransportError, match="4 attempts"):
        client.get(ACCESS_TOKENS, 1)


def test_a_command_whose_answer_is_lost_is_not_sent_again(running):
    token_id = running.sim.records(ACCESS_TOKENS)[0]["Id"]
    with running.client() as client:
        command = client.commands(ACCESS_TOKENS)[0]
        running.sim.faults.drop_rate = 1.0
        with pytest.raises(UncertainOutcomeError):
            client.run_command(ACCESS_TOKENS, command.key, [token_id], [])
        running.sim.faults.drop_rate = 0.0
        running.sim.faults.error_rate = 1.0
        with pytest.raises(ServerError, match="not retried"):
            client.run_command(ACCESS_TOKENS, command.key, [token_id], [])
    assert len(api_requests(running.sim, "runcommand", "POST")) == 2


@pytest.mark.parametrize(("fault", "message"), [("malformed_rate", "malformed JSON"), ("html_rate", "text/html")])
def test_non_json_answers_give_a_clear_error(running, fault, message):
    setattr(running.sim.faults, fault, 1.0)
    with running.client() as client, pytest.raises(ResponseFormatError) as failed:
        list(client.iter_records(ACCESS_TOKENS))
    assert "attempts" in str(failed.value)
    running.sim.faults.malformed_rate = running.sim.faults.html_rate = 0.0
    with running.client() as client:
        client.commands(ACCESS_TOKENS)
        setattr(running.sim.faults, fault, 1.0)
        with pytest.raises(ResponseFormatError, match=message):
            client.create(ACCESS_TOKENS, {"BusinessId": 1, "AccessCode": "X", "MinutesIncluded": 1})


# -- secrets ---------------------------------------------------------------------------------


def test_secrets_never_reach_logs_errors_or_reprs(start_simulator, caplog):
    running = start_simulator(seed=9, tokens=5, access_token_ttl=1)
    caplog.set_level(logging.DEBUG)
    texts = []
    with running.client(auth="bearer") as client:
        running.sim.faults.error_rate = 0.5
        list(client.iter_records(ACCESS_TOKENS))
        texts.append(repr(client))
    running.sim.faults.error_rate = 0.0
    for auth in ("basic", "bearer"):
        with running.client(auth=auth, password=DEFAULT_PASSWORD + "-wrong") as client:
            with pytest.raises(AuthenticationError) as refused:
                client.get(ACCESS_TOKENS, 1)
            texts += [str(refused.value), repr(refused.value), repr(client)]
    everything = caplog.text + "\n".join(texts)
    assert DEFAULT_PASSWORD not in everything
    assert "Bearer " not in everything and "Basic " not in everything
    for token in running.sim.issued_tokens():
        assert token not in everything


def test_pacing_is_never_early_at_the_server_whatever_the_network_delay(start_simulator):
    """The server counts each request after a random delay; windows are crossed many times."""
    running = start_simulator(
        seed=8,
        tokens=400,
        contracts=5,
        passes=5,
        enforce_limits=True,
        limits=server_limits.Limits(all_methods=(server_limits.Window(1, 0.1), server_limits.Window(12, 3)), writes=()),
    )
    running.sim.faults.jitter_ms = 150  # before the server's limiter counts the request
    client = running.client(
        limits=RateLimits(all_methods=(Window(1, 0.1), Window(12, 3)), writes=(), margin=0), page_size=10
    )
    with client:
        records = [record for page in client.iter_pages(ACCESS_TOKENS) for record in page.records]
    assert len(records) == 400 and client.stats.requests >= 40
    assert running.sim.stats["by_status"].get(409, 0) == 0, running.sim.stats["by_status"]


# -- TLS -------------------------------------------------------------------------------------


def test_clients_share_one_tls_context_as_strict_as_httpx_default():
    shared = _verified_tls()
    assert _verified_tls() is shared
    default = httpx.create_ssl_context()
    assert (shared.verify_mode, shared.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert (shared.options, shared.minimum_version) == (default.options, default.minimum_version)
    assert shared.cert_store_stats() == default.cert_store_stats()
