"""The Nexudus simulator, exercised over real HTTP with httpx (never the project's client)."""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

import nexudus_assets.simulator as simulator_package
from nexudus_assets.nexudus.entities import (
    ACCESS_TOKENS,
    COWORKER_CONTRACTS,
    COWORKER_TIME_PASSES,
    ENTITIES,
    Entity,
)
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME, Faults, Limits, Simulator, SimulatorServer
from nexudus_assets.simulator.dialect import Dialect
from nexudus_assets.simulator.limits import Window
from nexudus_assets.simulator.process import SimulatorStartError, running_simulator
from nexudus_assets.simulator.store import object_layout

NOW = dt.datetime(2025, 6, 1, 9, 30, tzinfo=dt.UTC)
ENVELOPE_KEYS = {
    "Records", "CurrentPageSize", "CurrentPage", "CurrentOrderField", "CurrentSortDirection", "FirstItem",
    "HasNextPage", "HasPreviousPage", "LastItem", "PageNumber", "PageSize", "TotalItems", "TotalPages",
}  # fmt: skip
THROTTLED_TEXT = "You must wait before accessing this url again."


def small(**overrides: Any) -> Simulator:
    options: dict[str, Any] = {"seed": 7, "tokens": 40, "contracts": 20, "passes": 20, "now": NOW}
    return Simulator(**(options | overrides))


@pytest.fixture
def sim() -> Simulator:
    return small()


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    with SimulatorServer(sim) as running:
        yield running


@pytest.fixture
def client(server: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD), timeout=10) as http:
        yield http


def records(client: httpx.Client, entity: Entity, **params: Any) -> list[dict[str, Any]]:
    answer = client.get(entity.path, params={"size": 1000, **params})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["Records"]
    return found


def ids(client: httpx.Client, entity: Entity, **params: Any) -> list[int]:
    return [record["Id"] for record in records(client, entity, **params)]


def token_form(client: httpx.Client, form: dict[str, str], **headers: str) -> httpx.Response:
    """POST /api/token without the client's Basic credentials."""
    return httpx.post(client.base_url.join("token"), data=form, headers=headers)


def bearer_status(client: httpx.Client, access_token: str) -> int:
    answer = httpx.get(client.base_url.join(ACCESS_TOKENS.path), headers={"Authorization": f"Bearer {access_token}"})
    return answer.status_code


# ---------------------------------------------------------------------------- data


def test_simulator_shares_only_entities_and_models_never_the_client() -> None:
    imported = set()
    for source in Path(simulator_package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    from_project = {name for name in imported if name.startswith("nexudus_assets.") and ".simulator" not in name}
    assert from_project == {"nexudus_assets.nexudus.entities", "nexudus_assets.nexudus.models"}
    assert "httpx" not in imported


def test_same_seed_gives_the_same_account_and_another_seed_does_not() -> None:
    first, again, other = small(), small(), small(seed=8)
    for entity in ENTITIES:
        assert first.records(entity) == again.records(entity)
        assert first.records(entity) != other.records(entity)
    assert first.mutate(ACCESS_TOKENS, update=3, delete=2) == again.mutate(ACCESS_TOKENS, update=3, delete=2)


def test_generated_records_are_realistic_and_fit_the_shared_models() -> None:
    sim = small(tokens=400, contracts=100, passes=100)
    now = NOW.replace(tzinfo=None).isoformat()
    for entity in ENTITIES:
        rows = sim.records(entity)
        assert [list(row) for row in rows] == [list(object_layout(entity.model))] * len(rows)
        assert [r["Id"] for r in rows] == sorted(r["Id"] for r in rows) and rows[0]["Id"] >= 1_000_000
        for row in rows:
            entity.model.model_validate(row)
            assert row["CreatedOn"].endswith("Z") and row["CreatedOn"] <= row["UpdatedOn"] <= now + "Z"
    tokens = sim.records(ACCESS_TOKENS)
    assert all(0 <= t["MinutesLeft"] <= t["MinutesIncluded"] for t in tokens)
    assert sum(t["MinutesLeft"] < 60 for t in tokens) > len(tokens) / 5
    valid_to = [t["ValidTo"] for t in tokens]
    assert None in valid_to and any(v and v < now for v in valid_to) and any(v and v > now for v in valid_to)
    assert len({t["BusinessId"] for t in tokens}) > 1
    assert all(re.fullmatch(r"[A-Z2-9]{8}", t["AccessCode"]) for t in tokens)
    contracts = sim.records(COWORKER_CONTRACTS)
    assert {c["Cancelled"] for c in contracts} == {c["Active"] for c in contracts} == {True, False}
    assert all(1 <= c["BillingDay"] <= 28 and c["StartDate"] < now for c in contracts)
    passes = sim.records(COWORKER_TIME_PASSES)
    assert all(p["RemainingUses"] <= p["TotalUses"] for p in passes)
    assert {p["Used"] for p in passes} == {True, False}


# ---------------------------------------------------------------------------- lists


def test_legacy_list_shape_uses_bare_relations_and_prefixed_display_fields(client: httpx.Client) -> None:
    token = records(client, ACCESS_TOKENS)[0]
    assert "Business" in token and "BusinessId" not in token
    assert token["CreatedOn"].endswith("Z") and not (token["ValidTo"] or "").endswith("Z")
    contract = records(client, COWORKER_CONTRACTS)[0]
    assert {"Coworker", "Tariff", "IssuedBy", "NextTariff", "CoworkerContractTariffName"} <= contract.keys()
    assert not {"CoworkerId", "TariffName"} & contract.keys()
    time_pass = records(client, COWORKER_TIME_PASSES)[0]
    assert {
        "TimePass",
        "CoworkerTimePassTimePassName",
        "CoworkerTimePassTimePassCurrency_Code",
    } <= time_pass.keys()
    for entity in ENTITIES:
        for record in records(client, entity):
            entity.model.model_validate(record)


def test_modern_list_shape_and_single_records_use_object_names() -> None:
    sim = small(list_shape="modern")
    with (
        SimulatorServer(sim) as server,
        httpx.Client(base_url=server.base_url, auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD)) as client,
    ):
        contract = records(client, COWORKER_CONTRACTS)[0]
        assert {
            "CoworkerId",
            "TariffId",
            "TariffName",
            "CoworkerFullName",
            "TariffCurrency_Code",
        } <= contract.keys()
        assert "Coworker" not in contract and "CoworkerContractTariffName" not in contract
        for entity in (COWORKER_CONTRACTS, COWORKER_TIME_PASSES):
            wire = entity.model.wire_names()
            display = {wire[name] for name in entity.model.display_fields}
            listed = records(client, entity)[0]
            always_set = display - {"NextTariffName", "CoworkerCompanyName"}
            assert display <= listed.keys() and all(listed[name] is not None for name in always_set)
        single = client.get(f"{COWORKER_CONTRACTS.path}/{contract['Id']}").json()
        assert single == sim.get(COWORKER_CONTRACTS, contract["Id"]) and "TariffName" not in single


@pytest.mark.parametrize(
    ("count", "page", "expected"), [(0, 1, 0), (1, 1, 1), (1000, 1, 1000), (1001, 1, 1000), (1001, 2, 1)]
)
def test_paging_envelope(count: int, page: int, expected: int) -> None:
    with (
        SimulatorServer(small(tokens=count)) as server,
        httpx.Client(base_url=server.base_url, auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD)) as client,
    ):
        answer = client.get(ACCESS_TOKENS.path, params={"page": page, "size": 1000}).json()
    assert set(answer) == ENVELOPE_KEYS and len(answer["Records"]) == expected
    pages = -(-count // 1000)
    summary = {name: answer[name] for name in ("TotalItems", "TotalPages", "CurrentPage", "PageSize")}
    assert summary == {"TotalItems": count, "TotalPages": pages, "CurrentPage": page, "PageSize": 1000}
    assert answer["HasNextPage"] is (page < pages) and answer["HasPreviousPage"] is (page > 1)
    first = (page - 1) * 1000 + 1 if count else 0
    assert (answer["FirstItem"], answer["LastItem"]) == (first, first + expected - 1 if count else 0)
    assert (answer["CurrentOrderField"], answer["CurrentSortDirection"]) == ("Id", 1)


def test_page_size_defaults_to_25_and_is_capped_at_1000(client: httpx.Client) -> None:
    assert len(client.get(ACCESS_TOKENS.path).json()["Records"]) == 25
    assert client.get(ACCESS_TOKENS.path, params={"size": 5000}).json()["PageSize"] == 1000
    descending = ids(client, ACCESS_TOKENS, dir="Descending")
    assert descending == sorted(descending, reverse=True) and len(descending) == 40


def test_equality_filters(sim: Simulator, client: httpx.Client) -> None:
    tokens = sim.records(ACCESS_TOKENS)
    business = tokens[0]["BusinessId"]
    expected = [t["Id"] for t in tokens if t["BusinessId"] == business]
    assert ids(client, ACCESS_TOKENS, AccessToken_Business=business) == expected != [t["Id"] for t in tokens]
    assert ids(client, ACCESS_TOKENS, AccessToken_BusinessId=business) == expected
    assert ids(client, ACCESS_TOKENS, AccessToken_AccessCode=tokens[3]["AccessCode"].lower()) == [tokens[3]["Id"]]
    assert ids(client, ACCESS_TOKENS, Id=tokens[5]["Id"]) == [tokens[5]["Id"]]
    assert ids(client, ACCESS_TOKENS, AccessToken_MinutesLeft="not-a-number") == []
    assert len(ids(client, ACCESS_TOKENS, AccessToken_Colour="blue")) == len(tokens)  # unknown: ignored
    contracts = sim.records(COWORKER_CONTRACTS)
    cancelled = [c["Id"] for c in contracts if c["Cancelled"]]
    assert ids(client, COWORKER_CONTRACTS, CoworkerContract_Cancelled="true") == cancelled
    hot_desks = [
        c["Id"] for c in contracts if c["TariffId"] in {t.id for t in sim.world.tariffs if t.name == "Hot Desk"}
    ]
    assert ids(client, COWORKER_CONTRACTS, CoworkerContract_TariffName="hot desk") == hot_desks


def test_filter_by_ids_takes_a_bracketed_list(sim: Simulator, client: httpx.Client) -> None:
    wanted = [t["Id"] for t in sim.records(ACCESS_TOKENS)[2:5]]
    assert ids(client, ACCESS_TOKENS, AccessToken_Id=f"[{','.join(map(str, reversed(wanted)))},1]") == wanted
    raw_url = f"{ACCESS_TOKENS.path}?AccessToken_Id=[{wanted[0]},{wanted[2]}]&size=1000"
    assert [r["Id"] for r in client.get(raw_url).json()["Records"]] == [wanted[0], wanted[2]]


def test_range_filters_compare_dates_at_minute_precision(sim: Simulator, client: httpx.Client) -> None:
    target = sim.records(ACCESS_TOKENS)[4]["Id"]
    sim.update(ACCESS_TOKENS, [target], {"UpdatedOn": "2030-01-01T10:00:30Z"})
    assert ids(client, ACCESS_TOKENS, from_AccessToken_UpdatedOn="2030-01-01T10:00") == [target]
    assert ids(
        client,
        ACCESS_TOKENS,
        to_AccessToken_UpdatedOn="2030-01-01T10:00",
        From_AccessToken_UpdatedOn="2030-01-01T10:00",
    ) == [target]
    assert ids(client, ACCESS_TOKENS, FROM_AccessToken_UpdatedOn="2030-01-01T10:01") == []
    assert target not in ids(client, ACCESS_TOKENS, to_AccessToken_UpdatedOn="2030-01-01T09:59")
    tokens = sim.records(ACCESS_TOKENS)
    expected = [t["Id"] for t in tokens if 10 <= t["MinutesLeft"] <= 200]
    assert ids(client, ACCESS_TOKENS, From_AccessToken_MinutesLeft=10, To_AccessToken_MinutesLeft=200) == expected
    assert 0 < len(expected) < len(tokens)


def _minute(stamp: Any) -> str | None:
    """A served `UpdatedOn` as `YYYY-MM-DDTHH:MM` UTC, worked out here apart from the simulator; None: unusable."""
    try:
        moment = dt.datetime.fromisoformat(str(stamp))
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M")


def _updated_between(sim: Simulator, low: str | None, high: str | None) -> list[int]:
    found = []
    for record in sim.records(ACCESS_TOKENS):
        minute = _minute(record.get("UpdatedOn"))
        if minute is not None and (low is None or low <= minute) and (high is None or minute <= high):
            found.append(record["Id"])
    return found


def test_updated_on_ranges_follow_every_change_to_the_records(sim: Simulator, client: httpx.Client) -> None:
    # Ranges on UpdatedOn are answered from an index: after each kind of change, every range
    # lists exactly the records a scan of what the simulator serves finds, in Id order.
    def assert_ranges_match() -> None:
        minutes = sorted({m for r in sim.records(ACCESS_TOKENS) if (m := _minute(r.get("UpdatedOn")))})
        bounds = [minutes[0], minutes[len(minutes) // 3], minutes[len(minutes) // 2], minutes[-1], "2031-01-01T00:00"]
        for low in [None, *bounds]:
            for high in [None, *bounds]:
                params = {"from_AccessToken_UpdatedOn": low, "to_AccessToken_UpdatedOn": high}
                sent = {name: value for name, value in params.items() if value is not None}
                if not sent:
                    continue  # no filter: every record, also those without a usable stamp
                assert ids(client, ACCESS_TOKENS, **sent) == _updated_between(sim, low, high), sent
        assert ids(client, ACCESS_TOKENS, AccessToken_UpdatedOn=bounds[2]) == _updated_between(
            sim, bounds[2], bounds[2]
        )

    assert_ranges_match()
    keys = [record["Id"] for record in sim.records(ACCESS_TOKENS)]
    sim.update(ACCESS_TOKENS, keys[3:6], {"UpdatedOn": "2030-06-01T10:00:00Z"})
    sim.update(ACCESS_TOKENS, keys[6:8], {"UpdatedOn": "2019-01-01T00:00:00Z"})  # earlier than every other
    assert_ranges_match()
    token = sim.records(ACCESS_TOKENS)[10]
    body = {"Id": token["Id"], "BusinessId": token["BusinessId"], "AccessCode": "CHANGED1", "MinutesIncluded": 9}
    assert client.put(ACCESS_TOKENS.path, json=body).json()["WasSuccessful"]
    assert run(client, ACCESS_TOKENS, "ACCESSTOKEN_ADD_MINUTES", keys[12:14], {"Name": "Minutes", "Value": 5})[
        "WasSuccessful"
    ]
    assert run(client, ACCESS_TOKENS, "ACCESSTOKEN_MERGE", keys[15:17])["WasSuccessful"]  # the second goes
    assert client.delete(f"{ACCESS_TOKENS.path}/{keys[20]}").status_code == 200
    sim.insert(ACCESS_TOKENS, 3)
    created = client.post(ACCESS_TOKENS.path, json={"BusinessId": 1, "AccessCode": "NEW00001", "MinutesIncluded": 60})
    assert created.json()["WasSuccessful"]
    assert_ranges_match()
    sim.put_raw(ACCESS_TOKENS, {"Id": keys[21], "AccessCode": "RAW", "UpdatedOn": "2030-06-01T10:00:00+02:00"})
    sim.put_raw(ACCESS_TOKENS, {"Id": keys[22], "AccessCode": "RAW", "UpdatedOn": "not a date"})
    sim.put_raw(ACCESS_TOKENS, {"Id": keys[-1] + 100, "AccessCode": "RAW, no stamp"})
    assert_ranges_match()
    # A change in place that names no record: the index is rebuilt from every record.
    table = sim.table(ACCESS_TOKENS)
    table[keys[25]]["UpdatedOn"] = "2030-06-01T10:00:00Z"
    table.changed()
    assert_ranges_match()


def test_list_hook_runs_between_pages_so_data_can_drift(sim: Simulator, client: httpx.Client) -> None:
    seen: list[int] = []

    def drift(entity: Entity, page: int) -> None:
        seen.append(page)
        if page == 1:
            sim.delete(entity, [sim.records(entity)[0]["Id"]])

    sim.on_list_page = drift
    first = client.get(ACCESS_TOKENS.path, params={"size": 10, "page": 1}).json()
    second = client.get(ACCESS_TOKENS.path, params={"size": 10, "page": 2}).json()
    assert seen == [1, 2] and (first["TotalItems"], second["TotalItems"]) == (40, 39)
    assert second["Records"][0]["Id"] == sim.records(ACCESS_TOKENS)[10]["Id"] != first["Records"][-1]["Id"]


def test_raw_records_are_served_verbatim_and_do_not_break_filters(sim: Simulator, client: httpx.Client) -> None:
    broken = {
        "AccessCode": "BROKEN01",
        "MinutesLeft": "abc",
        "ValidTo": "2024-02-30T10:00:00",
        "Business": "x",
    }
    key = sim.put_raw(ACCESS_TOKENS, broken)
    listed = records(client, ACCESS_TOKENS)
    assert listed[-1] == broken and key > listed[-2]["Id"]
    assert all(r.get("MinutesLeft") != "abc" for r in records(client, ACCESS_TOKENS, From_AccessToken_MinutesLeft=0))
    assert records(client, ACCESS_TOKENS, orderby="ValidTo")[-1] == broken


# ---------------------------------------------------------------------------- single records and writes


def test_missing_records_answer_404_not_found(sim: Simulator, client: httpx.Client) -> None:
    for answer in (client.get(f"{ACCESS_TOKENS.path}/1"), client.delete(f"{ACCESS_TOKENS.path}/1")):
        assert (answer.status_code, answer.json()) == (404, "Not found")
    answer = client.put(ACCESS_TOKENS.path, json={"Id": 1, "BusinessId": 1, "AccessCode": "X", "MinutesIncluded": 1})
    assert (answer.status_code, answer.json()) == (404, "Not found")
    contract = sim.records(COWORKER_CONTRACTS)[0]["Id"]
    assert client.delete(f"{COWORKER_CONTRACTS.path}/{contract}").status_code == 405  # no documented DELETE


def test_delete_answers_as_documented(sim: Simulator, client: httpx.Client) -> None:
    target = sim.records(COWORKER_TIME_PASSES)[0]["Id"]
    answer = client.delete(f"{COWORKER_TIME_PASSES.path}/{target}")
    assert answer.json() == {
        "Status": 200, "WasSuccessful": True, "Message": "The record was deleted successfully.", "Value": None,
        "OpenInDialog": False, "RedirectURL": None, "JavaScript": None, "Errors": None,
    }  # fmt: skip
    assert sim.get(COWORKER_TIME_PASSES, target) is None


def test_create_validates_and_fills_read_only_fields(sim: Simulator, client: httpx.Client) -> None:
    refused = client.post(ACCESS_TOKENS.path, json={"BusinessId": 1100001, "MinutesIncluded": 120})
    assert refused.status_code == 400
    assert refused.json() == {
        "Status": 400,
        "Message": "AccessCode: may not be null or empty",
        "Value": None,
        "WasSuccessful": False,
        "Errors": [{"AttemptedValue": None, "Message": "may not be null or empty", "PropertyName": "AccessCode"}],
    }
    assert (
        client.post(ACCESS_TOKENS.path, json={"Business": 1, "AccessCode": "A", "MinutesIncluded": "many"}).status_code
        == 400
    )
    created = client.post(
        ACCESS_TOKENS.path, json={"Business": 1100002, "AccessCode": "NEWCODE1", "MinutesIncluded": 120}
    )
    answer = created.json()
    assert created.status_code == 200 and answer["WasSuccessful"] is True and answer["Status"] == 200
    assert answer["Message"] == "Record 'NEWCODE1' has been successfully created."
    record = client.get(f"{ACCESS_TOKENS.path}/{answer['Value']['Id']}").json()
    assert (record["BusinessId"], record["MinutesLeft"], record["UpdatedBy"]) == (1100002, 120, DEFAULT_USERNAME)
    assert record["Id"] > max(t["Id"] for t in sim.records(ACCESS_TOKENS) if t["Id"] != record["Id"])
    assert record["CreatedOn"] == record["UpdatedOn"] and record["UniqueId"]
    ten_visits = next(p for p in sim.world.time_passes if p.uses == 10)
    body = {
        "CoworkerId": sim.world.coworkers[0].id,
        "BusinessId": 1100001,
        "TimePassId": ten_visits.id,
        "CreateMultiple": 3,
    }
    before = len(sim.records(COWORKER_TIME_PASSES))
    assert client.post(COWORKER_TIME_PASSES.path, json=body).json()["WasSuccessful"]
    passes = sim.records(COWORKER_TIME_PASSES)
    assert len(passes) == before + 3 and passes[-1]["TotalUses"] == passes[-1]["RemainingUses"] == 10


def test_put_clears_every_missing_field(sim: Simulator, client: httpx.Client) -> None:
    token = next(t for t in sim.records(ACCESS_TOKENS) if t["ValidTo"] and t["UserLimit"] and t["MinutesLeft"])
    body = {
        "Id": token["Id"],
        "BusinessId": token["BusinessId"],
        "AccessCode": "CHANGED1",
        "MinutesIncluded": 999,
        "MinutesLeft": 1,
    }
    answer = client.put(ACCESS_TOKENS.path, json=body)
    assert (
        answer.status_code == 200 and answer.json()["WasSuccessful"] and answer.json()["Value"] == {"Id": token["Id"]}
    )
    after = sim.get(ACCESS_TOKENS, token["Id"])
    assert after is not None
    assert (after["AccessCode"], after["MinutesIncluded"]) == ("CHANGED1", 999)
    assert after["Description"] is None and after["ValidTo"] is None and after["UserLimit"] is None
    assert after["MinutesLeft"] == token["MinutesLeft"]  # read-only: ignored
    assert after["UpdatedOn"] > token["UpdatedOn"] and after["CreatedOn"] == token["CreatedOn"]
    contract = next(c for c in sim.records(COWORKER_CONTRACTS) if c["ApplyProRating"])
    required = {name: contract[name] for name in COWORKER_CONTRACTS.create_required}
    assert client.put(COWORKER_CONTRACTS.path, json={"Id": contract["Id"], **required}).json()["WasSuccessful"]
    cleared = sim.get(COWORKER_CONTRACTS, contract["Id"])
    assert cleared is not None and cleared["ApplyProRating"] is False and cleared["RenewalDate"] is None


def test_put_without_required_fields_is_refused_and_changes_nothing(sim: Simulator, client: httpx.Client) -> None:
    token = sim.records(ACCESS_TOKENS)[0]
    answer = client.put(ACCESS_TOKENS.path, json={"Id": token["Id"], "Description": "only this"})
    assert answer.status_code == 400 and answer.json()["WasSuccessful"] is False
    assert [e["PropertyName"] for e in answer.json()["Errors"]] == [
        "BusinessId",
        "AccessCode",
        "MinutesIncluded",
    ]
    assert sim.get(ACCESS_TOKENS, token["Id"]) == token


def test_put_needs_an_id(client: httpx.Client) -> None:
    answer = client.put(ACCESS_TOKENS.path, json={"BusinessId": 1100001, "AccessCode": "X", "MinutesIncluded": 1})
    assert answer.status_code == 400 and answer.json()["Errors"][0]["PropertyName"] == "Id"


def test_serves_concurrent_requests_while_data_changes(sim: Simulator, server: SimulatorServer) -> None:
    def fetch(page: int) -> tuple[int, int]:
        with httpx.Client(base_url=server.base_url, auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD)) as client:
            answer = client.get(ACCESS_TOKENS.path, params={"page": page % 4 + 1, "size": 10})
            return answer.status_code, len(answer.json()["Records"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        pending = [pool.submit(fetch, page) for page in range(40)]
        for _ in range(20):
            sim.mutate(ACCESS_TOKENS, update=2, insert=1)
        results = [future.result() for future in pending]
    assert all(status == 200 and size == 10 for status, size in results)
    assert len(sim.records(ACCESS_TOKENS)) == 60


def test_server_errors_answer_the_documented_body() -> None:
    with SimulatorServer(small(faults=Faults(error_rate=1.0))) as server:
        answer = httpx.get(f"{server.base_url}/{ACCESS_TOKENS.path}", auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD))
    assert (answer.status_code, answer.json()) == (500, {"Message": "An error has occurred."})


# ---------------------------------------------------------------------------- auth


def test_requests_without_valid_credentials_are_denied(server: SimulatorServer) -> None:
    denied = {"Message": "Authorization has been denied for this request."}
    with httpx.Client(base_url=server.base_url) as anonymous:
        for auth in (None, (DEFAULT_USERNAME, "wrong"), ("someone@else.com", DEFAULT_PASSWORD)):
            answer = anonymous.get(ACCESS_TOKENS.path, auth=auth)
            assert (answer.status_code, answer.json()) == (401, denied)
        bogus = anonymous.get(ACCESS_TOKENS.path, headers={"Authorization": "Bearer nope"})
        assert bogus.status_code == 401
        assert anonymous.get(ACCESS_TOKENS.path, auth=(DEFAULT_USERNAME.upper(), DEFAULT_PASSWORD)).status_code == 200


def test_token_endpoint_wants_a_form_and_right_credentials(client: httpx.Client) -> None:
    form = {"grant_type": "password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
    as_json = httpx.post(client.base_url.join("token"), json=form)
    assert (as_json.status_code, as_json.json()) == (400, {"error": "unsupported_grant_type"})
    wrong = token_form(client, {"grant_type": "password", "username": DEFAULT_USERNAME, "password": "nope"})
    assert wrong.status_code == 400
    assert wrong.json() == {
        "error": "invalid_grant",
        "error_description": "The user name or password is incorrect.",
    }
    granted = token_form(client, form).json()
    assert set(granted) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert (granted["token_type"], granted["expires_in"]) == ("bearer", 7 * 24 * 3600)
    assert bearer_status(client, granted["access_token"]) == 200


def test_refresh_rotates_tokens_and_checks_the_client_id(client: httpx.Client) -> None:
    signed_in = token_form(
        client,
        {"grant_type": "password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD},
        client_id="my-app",
    ).json()
    refresh = {"grant_type": "refresh_token", "refresh_token": signed_in["refresh_token"]}
    other_client = token_form(client, refresh, client_id="another-app")
    assert other_client.status_code == 400 and other_client.json()["error"] == "invalid_clientId"
    assert token_form(client, refresh).status_code == 400  # defaults to the e-mail, not "my-app"
    renewed = token_form(client, refresh, client_id="my-app")
    assert renewed.status_code == 200
    assert renewed.json()["refresh_token"] != signed_in["refresh_token"]
    assert renewed.json()["access_token"] != signed_in["access_token"]
    reused = token_form(client, refresh, client_id="my-app")
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    assert bearer_status(client, renewed.json()["access_token"]) == 200
    again = {"grant_type": "refresh_token", "refresh_token": renewed.json()["refresh_token"]}
    assert token_form(client, again, client_id="my-app").status_code == 200


def test_revoked_tokens_stop_working(sim: Simulator, client: httpx.Client) -> None:
    granted = token_form(
        client, {"grant_type": "password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
    ).json()
    assert sim.issued_tokens() == [granted["access_token"], granted["refresh_token"]]
    sim.revoke_tokens()
    assert bearer_status(client, granted["access_token"]) == 401
    refresh = {"grant_type": "refresh_token", "refresh_token": granted["refresh_token"]}
    assert token_form(client, refresh).json()["error"] == "invalid_grant"


def test_expired_access_tokens_are_denied() -> None:
    with SimulatorServer(small(access_token_ttl=0)) as server, httpx.Client(base_url=server.base_url) as client:
        granted = token_form(
            client, {"grant_type": "password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
        ).json()
        assert bearer_status(client, granted["access_token"]) == 401


def test_two_factor_accounts_need_a_valid_code() -> None:
    secret = pyotp.random_base32()
    with SimulatorServer(small(totp_secret=secret)) as server, httpx.Client(base_url=server.base_url) as client:
        form = {"grant_type": "password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
        for extra in ({}, {"totp": "000000" if pyotp.TOTP(secret).now() != "000000" else "111111"}):
            refused = token_form(client, form | extra)
            assert (refused.status_code, refused.json()["error"]) == (400, "two_factor_auth_check")
        assert token_form(client, form | {"totp": pyotp.TOTP(secret).now()}).status_code == 200


# ---------------------------------------------------------------------------- commands


def test_commands_catalogue_has_the_documented_shape(client: httpx.Client) -> None:
    keys = {
        "Key", "Name", "AppliesOnlyToMultipleEntities", "AppliesOnlyToOneEntity", "AppliesOnlyToTwoEntities",
        "DisplayInDropdown", "DisplayInDropdownV2", "DisplayInGrid", "NeedsEntitiesToRun", "Order",
        "RequiresParameters",
    }  # fmt: skip
    for entity in ENTITIES:
        catalogue = client.get(f"{entity.path}/commands").json()
        assert all(set(command) == keys for command in catalogue) and 2 <= len(catalogue) <= 3
        assert any(c["AppliesOnlyToOneEntity"] for c in catalogue) and any(
            c["AppliesOnlyToTwoEntities"] for c in catalogue
        )
        batch = [c for c in catalogue if not (c["AppliesOnlyToOneEntity"] or c["AppliesOnlyToTwoEntities"])]
        assert batch and batch[0]["RequiresParameters"]
        types = {p["Type"] for c in catalogue for p in c["RequiresParameters"]}
        assert types <= {"Int32", "String", "Boolean", "DateTime"}
        assert all(set(p) == {"Name", "Type"} for c in catalogue for p in c["RequiresParameters"])


def run(
    client: httpx.Client,
    entity: Entity,
    key: str,
    record_ids: list[int],
    *params: dict[str, Any],
    path: str = "runcommand",
) -> dict[str, Any]:
    answer = client.post(f"{entity.path}/{path}", json={"Key": key, "Ids": record_ids, "Parameters": list(params)})
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


def test_commands_change_the_data(sim: Simulator, client: httpx.Client) -> None:
    first, second, third = sim.records(ACCESS_TOKENS)[:3]
    answer = run(
        client,
        ACCESS_TOKENS,
        "ACCESSTOKEN_ADD_MINUTES",
        [first["Id"], second["Id"]],
        {"Name": "Minutes", "Type": "Int32", "Value": 30},
    )
    assert answer["WasSuccessful"] and answer["Status"] == 200 and answer["Value"] == {"Id": first["Id"]}
    assert (
        answer["UpdatedBy"] == DEFAULT_USERNAME
        and answer["UpdatedOn"].endswith("Z")
        and answer["OpenInWindow"] is False
    )
    after = sim.get(ACCESS_TOKENS, first["Id"]) or {}
    assert (after["MinutesLeft"], after["MinutesIncluded"]) == (
        first["MinutesLeft"] + 30,
        first["MinutesIncluded"] + 30,
    )
    assert after["UpdatedOn"] == answer["UpdatedOn"] and sim.get(ACCESS_TOKENS, third["Id"]) == third
    # Parameters may come without names (as in the reference example), matched by position.
    assert run(
        client,
        ACCESS_TOKENS,
        "ACCESSTOKEN_EXTEND_VALIDITY",
        [third["Id"]],
        {"Type": "Int32", "Value": "10"},
        path="runacommand",
    )["WasSuccessful"]
    valid_to = dt.datetime.fromisoformat((sim.get(ACCESS_TOKENS, third["Id"]) or {})["ValidTo"])
    assert third["ValidTo"] is None or valid_to == dt.datetime.fromisoformat(third["ValidTo"]) + dt.timedelta(days=10)
    assert run(client, ACCESS_TOKENS, "ACCESSTOKEN_MERGE", [first["Id"], second["Id"]])["WasSuccessful"]
    merged = sim.get(ACCESS_TOKENS, first["Id"]) or {}
    assert merged["MinutesLeft"] == after["MinutesLeft"] + second["MinutesLeft"] + 30
    assert sim.get(ACCESS_TOKENS, second["Id"]) is None

    contract = next(
        c for c in sim.records(COWORKER_CONTRACTS) if c["RenewalDate"] and int(c["RenewalDate"][8:10]) <= 28
    )
    assert run(client, COWORKER_CONTRACTS, "COWORKERCONTRACT_RENEW", [contract["Id"]])["WasSuccessful"]
    renewed = (sim.get(COWORKER_CONTRACTS, contract["Id"]) or {})["RenewalDate"]
    old = dt.datetime.fromisoformat(contract["RenewalDate"])
    assert renewed == old.replace(year=old.year + old.month // 12, month=old.month % 12 + 1).isoformat()
    note = {"Name": "Note", "Type": "String", "Value": "Called about the invoice."}
    assert run(client, COWORKER_CONTRACTS, "COWORKERCONTRACT_ADD_NOTE", [contract["Id"]], note)["WasSuccessful"]
    assert (sim.get(COWORKER_CONTRACTS, contract["Id"]) or {})["Notes"].endswith("Called about the invoice.")

    time_pass = next(p for p in sim.records(COWORKER_TIME_PASSES) if not p["Used"])
    assert run(client, COWORKER_TIME_PASSES, "COWORKERTIMEPASS_MARK_USED", [time_pass["Id"]])["WasSuccessful"]
    used = sim.get(COWORKER_TIME_PASSES, time_pass["Id"]) or {}
    assert (used["Used"], used["RemainingUses"]) == (True, 0) and used["UsedDate"]
    assert [c["key"] for c in sim.commands_run] == [
        "ACCESSTOKEN_ADD_MINUTES", "ACCESSTOKEN_EXTEND_VALIDITY", "ACCESSTOKEN_MERGE",
        "COWORKERCONTRACT_RENEW", "COWORKERCONTRACT_ADD_NOTE", "COWORKERTIMEPASS_MARK_USED",
    ]  # fmt: skip
    assert sim.commands_run[0] == {
        "entity": "AccessToken", "key": "ACCESSTOKEN_ADD_MINUTES", "ids": [first["Id"], second["Id"]],
        "parameters": [{"Name": "Minutes", "Type": "Int32", "Value": 30}], "was_successful": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("key", "pick", "params"),
    [
        ("NO_SUCH_COMMAND", [0], []),
        ("ACCESSTOKEN_EXTEND_VALIDITY", [0, 1], [{"Name": "Days", "Type": "Int32", "Value": 1}]),
        ("ACCESSTOKEN_MERGE", [0], []),
        ("ACCESSTOKEN_ADD_MINUTES", [0], []),
        ("ACCESSTOKEN_ADD_MINUTES", [0], [{"Name": "Minutes", "Type": "Int32", "Value": "lots"}]),
        ("ACCESSTOKEN_ADD_MINUTES", [-1], [{"Name": "Minutes", "Type": "Int32", "Value": 5}]),
        ("ACCESSTOKEN_ADD_MINUTES", [0, 2], [{"Name": "Minutes", "Type": "Int32", "Value": 5}]),
    ],
    ids=[
        "unknown key",
        "one-record command on two",
        "two-record command on one",
        "missing parameter",
        "bad parameter",
        "unknown id",
        "failing id",
    ],
)
def test_failed_commands_answer_200_with_was_successful_false(
    sim: Simulator, client: httpx.Client, key: str, pick: list[int], params: list[dict[str, Any]]
) -> None:
    before = sim.records(ACCESS_TOKENS)
    sim.faults.failing_command_ids = {before[2]["Id"]}
    record_ids = [before[i]["Id"] if i >= 0 else 1 for i in pick]
    answer = run(client, ACCESS_TOKENS, key, record_ids, *params)
    assert answer["WasSuccessful"] is False and answer["Status"] == 500 and answer["Value"] is None
    assert answer["Message"] and answer["Errors"] is None
    assert sim.records(ACCESS_TOKENS) == before
    assert sim.commands_run[-1]["was_successful"] is False


# ---------------------------------------------------------------------------- limits and faults


def test_published_limits_answer_409_with_retry_after() -> None:
    sim = small(enforce_limits=True)
    with (
        SimulatorServer(sim) as server,
        httpx.Client(base_url=server.base_url, auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD)) as client,
    ):
        assert client.get(ACCESS_TOKENS.path).status_code == 200
        too_soon = client.get(ACCESS_TOKENS.path)  # within 100 ms of the first
        assert too_soon.status_code == 409 and too_soon.text == THROTTLED_TEXT
        assert int(too_soon.headers["Retry-After"]) >= 1
        time.sleep(0.12)
        assert client.get(ACCESS_TOKENS.path).status_code == 200
    assert sim.stats["throttled"] == 1 and sim.stats["by_status"] == {200: 2, 409: 1}


def test_limit_windows_are_configurable_and_writes_have_their_own() -> None:
    sim = small(enforce_limits=True, limits=Limits(all_methods=(Window(4, 60),), writes=(Window(1, 60),)))
    body = {"BusinessId": 1100001, "AccessCode": "LIMIT001", "MinutesIncluded": 60}
    with (
        SimulatorServer(sim) as server,
        httpx.Client(base_url=server.base_url, auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD)) as client,
    ):
        assert client.post(ACCESS_TOKENS.path, json=body).status_code == 200
        refused = client.post(ACCESS_TOKENS.path, json=body)
        assert refused.status_code == 409 and 1 <= int(refused.headers["Retry-After"]) <= 60
        assert [client.get(ACCESS_TOKENS.path).status_code for _ in range(4)] == [200, 200, 200, 409]
    assert sim.stats["throttled"] == 2


def test_throttle_fault_uses_the_configured_retry_after(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.throttle_rate, sim.faults.retry_after = 1.0, 0
    answer = client.get(ACCESS_TOKENS.path)
    assert (answer.status_code, answer.headers["Retry-After"], answer.text) == (409, "0", THROTTLED_TEXT)
    assert (
        token_form(
            client, {"grant_type": "password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
        ).status_code
        == 200
    )
    sim.faults.include_token_endpoint = True
    assert (
        token_form(
            client, {"grant_type": "password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
        ).status_code
        == 409
    )


def test_dropped_requests_get_no_answer(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.drop_rate = 1.0
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(ACCESS_TOKENS.path)
    sim.faults.drop_rate = 0.0
    assert client.get(ACCESS_TOKENS.path).status_code == 200
    assert [entry[3] for entry in sim.request_log] == [0, 200]


def test_malformed_and_html_answers(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.malformed_rate = 1.0
    cut = client.get(ACCESS_TOKENS.path)
    assert cut.status_code == 200 and cut.headers["Content-Type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        cut.json()
    sim.faults.malformed_rate, sim.faults.html_rate = 0.0, 1.0
    page = client.get(ACCESS_TOKENS.path)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html") and "<html>" in page.text


def test_latency_and_seeded_error_rate(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.latency_ms = 150
    started = time.perf_counter()
    assert client.get(ACCESS_TOKENS.path).status_code == 200
    assert time.perf_counter() - started >= 0.15
    sim.faults.update({"latency_ms": 0, "error_rate": 0.5, "seed": 3})
    pattern = [client.get(ACCESS_TOKENS.path).status_code for _ in range(20)]
    sim.faults.update({"seed": 3})
    assert [client.get(ACCESS_TOKENS.path).status_code for _ in range(20)] == pattern
    assert set(pattern) == {200, 500}


def test_inflated_totals_promise_pages_that_come_back_empty(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.total_items_inflation = 50
    first = client.get(ACCESS_TOKENS.path, params={"size": 40}).json()
    assert (first["TotalItems"], first["TotalPages"], first["HasNextPage"], len(first["Records"])) == (
        90,
        3,
        True,
        40,
    )
    second = client.get(ACCESS_TOKENS.path, params={"size": 40, "page": 2}).json()
    assert second["Records"] == [] and second["HasNextPage"] is True


def test_endless_pages_serve_fresh_ids_for_ever_under_a_small_total(sim: Simulator, client: httpx.Client) -> None:
    last_real_id = sim.records(ACCESS_TOKENS)[-1]["Id"]
    sim.faults.endless_pages = True
    pages = [client.get(ACCESS_TOKENS.path, params={"size": 10, "page": page}).json() for page in (1, 2, 500)]
    served = [record["Id"] for page in pages for record in page["Records"]]
    assert len(served) == len(set(served)) == 30 and min(served) > last_real_id
    assert [(page["TotalItems"], page["HasNextPage"], page["TotalPages"]) for page in pages] == [
        (40, True, 2),
        (40, True, 3),
        (40, True, 501),
    ]


def test_hostile_ids_stand_at_odd_positions_among_good_records(sim: Simulator, client: httpx.Client) -> None:
    real = [record["Id"] for record in sim.records(ACCESS_TOKENS)]
    sim.faults.update({"hostile_ids": ["true", "huge", "object"]})
    first = [record["Id"] for record in client.get(ACCESS_TOKENS.path, params={"size": 4}).json()["Records"]]
    second = [
        record["Id"] for record in client.get(ACCESS_TOKENS.path, params={"size": 4, "page": 2}).json()["Records"]
    ]
    assert first == [real[0], True, real[2], 2**70]
    assert second == [real[4], {"a": 1}, real[6], real[7]]
    with pytest.raises(ValueError, match="unknown hostile_ids nope"):
        sim.faults.update({"hostile_ids": ["nope"]})


def test_nesting_depth_nests_a_field_of_the_first_record(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.nesting_depth = 50_000
    text = client.get(ACCESS_TOKENS.path, params={"size": 2}).text
    assert '"Nested":' + "[" * 50_000 + "]" * 50_000 in text
    assert text.count('"Nested"') == 1


def test_trickled_bodies_come_one_byte_at_a_time(sim: Simulator, client: httpx.Client) -> None:
    sim.faults.trickle_body_seconds = 0.05
    with client.stream("GET", ACCESS_TOKENS.path, params={"size": 1}) as answer:
        first_pieces = [piece for _, piece in zip(range(3), answer.iter_raw(), strict=False)]
        assert answer.status_code == 200 and int(answer.headers["Content-Length"]) > 100
    assert first_pieces == [b"{", b'"', b"R"]


# ---------------------------------------------------------------------------- observation and admin


def test_stats_and_request_log(sim: Simulator, client: httpx.Client) -> None:
    client.get(ACCESS_TOKENS.path, params={"page": 2})
    client.get(f"{ACCESS_TOKENS.path}/1")
    assert sim.request_log == [
        ("GET", "/api/spaces/accesstokens", {"page": "2"}, 200),
        ("GET", "/api/spaces/accesstokens/1", {}, 404),
    ]
    assert sim.stats == {
        "requests": 2,
        "throttled": 0,
        "by_status": {200: 1, 404: 1},
        "by_path": {"/api/spaces/accesstokens": 1, "/api/spaces/accesstokens/1": 1},
    }
    sim.reset_stats()
    assert sim.stats["requests"] == 0 and sim.request_log == []


def test_admin_endpoints(sim: Simulator, server: SimulatorServer) -> None:
    with (
        httpx.Client(base_url=f"{server.url}/_simulator") as admin,
        httpx.Client(base_url=server.base_url, auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD)) as api,
    ):
        health = admin.get("health").json()
        assert health["status"] == "ok" and health["records"]["AccessToken"] == 40
        api.get(ACCESS_TOKENS.path)
        assert admin.get("stats").json()["by_status"] == {"200": 1}
        assert admin.post("reset-stats").json()["requests"] == 0
        assert admin.post("faults", json={"error_rate": 1.0, "failing_command_ids": [5]}).json()["error_rate"] == 1.0
        assert sim.faults.failing_command_ids == {5} and api.get(ACCESS_TOKENS.path).status_code == 500
        admin.post("faults", json={"error_rate": 0})
        assert admin.post("faults", json={"no_such_fault": 1}).status_code == 400
        assert admin.post("faults", json={"hostile_ids": ["nope"]}).status_code == 400
        assert admin.post("faults", json={"hostile_ids": ["float"]}).json()["hostile_ids"] == ["float"]
        admin.post("faults", json={"hostile_ids": []})
        touched = admin.post("mutate", json={"entity": "access_tokens", "update": 2, "insert": 3, "delete": 1}).json()
        assert [len(touched[k]) for k in ("updated", "inserted", "deleted")] == [2, 3, 1]
        listed = ids(api, ACCESS_TOKENS)
        assert set(touched["inserted"]) <= set(listed) and touched["deleted"][0] not in listed and len(listed) == 42
        assert admin.post("mutate", json={"entity": "Nope", "update": 1}).status_code == 400
        assert admin.get("stats").json()["requests"] == 2  # admin calls are not counted


def test_python_mutations_bump_updated_on_and_extend_ids(sim: Simulator) -> None:
    before = sim.records(COWORKER_CONTRACTS)
    new_ids = sim.insert(COWORKER_CONTRACTS, 2)
    assert new_ids[0] > before[-1]["Id"] and new_ids[1] > new_ids[0]
    inserted = sim.get(COWORKER_CONTRACTS, new_ids[0]) or {}
    assert inserted["CreatedOn"] == inserted["UpdatedOn"] > NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    sim.update(COWORKER_CONTRACTS, [before[0]["Id"]])
    changed = sim.get(COWORKER_CONTRACTS, before[0]["Id"]) or {}
    assert changed != before[0] and changed["UpdatedOn"] > before[0]["UpdatedOn"]
    sim.update(COWORKER_CONTRACTS, [before[1]["Id"]], {"Notes": "set by a test"})
    assert (sim.get(COWORKER_CONTRACTS, before[1]["Id"]) or {})["Notes"] == "set by a test"
    sim.delete(COWORKER_CONTRACTS, [before[2]["Id"]])
    assert sim.get(COWORKER_CONTRACTS, before[2]["Id"]) is None and len(sim.records(COWORKER_CONTRACTS)) == 21


def test_stopping_closes_kept_alive_connections(sim: Simulator) -> None:
    server = SimulatorServer(sim)
    with httpx.Client(base_url=server.base_url, auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD)) as client:
        first = client.get(ACCESS_TOKENS.path)
        second = client.get(ACCESS_TOKENS.path)
        assert first.headers.get("Connection") != "close" and second.status_code == 200
        started = time.perf_counter()
        server.stop()
        assert time.perf_counter() - started < 1
        with pytest.raises(httpx.TransportError):
            client.get(ACCESS_TOKENS.path)


def test_cli_prints_its_address_and_stops_on_sigterm() -> None:
    arguments = ["--tokens", "5", "--contracts", "2", "--passes", "2", "--list-shape", "modern"]
    with running_simulator(arguments) as simulator:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", simulator.base_url), simulator.base_url
        answer = httpx.get(f"{simulator.base_url}/{ACCESS_TOKENS.path}", auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD))
        assert answer.json()["TotalItems"] == 5 and "BusinessId" in answer.json()["Records"][0]
        simulator.process.send_signal(signal.SIGTERM)
        assert simulator.process.wait(timeout=5) == 0


def test_a_simulator_process_that_cannot_start_says_so() -> None:
    with pytest.raises(SimulatorStartError, match="exited with status 2"), running_simulator(["--tokens", "none"]):
        pass


# -- live-account behaviours, each behind a switch -----------------------------------------------


@pytest.fixture
def serve() -> Iterator[Callable[[Simulator], httpx.Client]]:
    """Serves a simulator and gives an HTTP client for it; both stop at the end of the test."""
    with ExitStack() as stack:

        def start(sim: Simulator) -> httpx.Client:
            running = stack.enter_context(SimulatorServer(sim))
            auth = (DEFAULT_USERNAME, DEFAULT_PASSWORD)
            return stack.enter_context(httpx.Client(base_url=running.base_url, auth=auth, timeout=10))

        yield start


def test_long_ids_come_in_interleaved_blocks_relations_too(serve: Callable[[Simulator], httpx.Client]) -> None:
    sim = small(dialect=Dialect(long_ids=True))
    client = serve(sim)
    served = ids(client, ACCESS_TOKENS)
    assert min(served) > 2**32 and served == sorted(served)
    later = sim.insert(ACCESS_TOKENS, 4)
    # Created one after the other, yet not in Id order: two blocks take turns.
    assert later != sorted(later)
    assert min(record["BusinessId"] for record in sim.records(ACCESS_TOKENS)) > 2**31


def test_tick_fractions_business_dates_with_z_and_a_lone_surrogate_are_served_as_live_accounts_send_them(
    serve: Callable[[Simulator], httpx.Client],
) -> None:
    sim = small(dialect=Dialect(tick_fractions=True, business_dates_utc=True, lone_surrogate=True), list_shape="modern")
    client = serve(sim)
    answer = client.get(COWORKER_CONTRACTS.path, params={"size": 1000})
    contracts = answer.json()["Records"]
    fractions = [re.fullmatch(r".*:\d\d\.(\d{1,7})Z", record["UpdatedOn"]) for record in contracts]
    assert sum(1 for match in fractions if match) > len(contracts) * 0.8
    assert {len(match.group(1)) for match in fractions if match} >= {7}
    assert all(record["StartDate"].endswith("T00:00:00Z") for record in contracts if record["StartDate"])
    # What the tests read is what is served.
    assert [record["UpdatedOn"] for record in sim.records(COWORKER_CONTRACTS)] == [r["UpdatedOn"] for r in contracts]
    tokens = client.get(ACCESS_TOKENS.path, params={"size": 1000})
    assert tokens.text.count('"Front desk \\ud83d"') == 1


def test_pages_capped_below_the_size_asked_can_count_their_pages_from_the_size_asked(
    serve: Callable[[Simulator], httpx.Client],
) -> None:
    sim = small(
        tokens=250, dialect=Dialect(max_page_size=100, echo_requested_size=True, pages_from_requested_size=True)
    )
    client = serve(sim)
    first = client.get(ACCESS_TOKENS.path, params={"size": 1000}).json()
    assert (len(first["Records"]), first["TotalItems"], first["TotalPages"], first["HasNextPage"]) == (
        100,
        250,
        1,
        False,
    )


def test_the_range_filter_can_be_read_in_a_zone_west_of_utc(serve: Callable[[Simulator], httpx.Client]) -> None:
    sim = small(dialect=Dialect(filter_utc_offset_hours=-5))
    client = serve(sim)
    [changed] = sim.insert(ACCESS_TOKENS)
    stamp = dt.datetime.fromisoformat(sim.get(ACCESS_TOKENS, changed)["UpdatedOn"][:-1])
    param = "from_AccessToken_UpdatedOn"
    # Sent in UTC, read as UTC-5 local time: five hours later than meant, so the change is missed.
    assert changed not in ids(
        client, ACCESS_TOKENS, **{param: (stamp - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")}
    )
    assert changed in ids(client, ACCESS_TOKENS, **{param: (stamp - dt.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M")})


def test_drift_between_pages_deletes_on_the_page_served_and_inserts_after_it_keeping_the_total(
    serve: Callable[[Simulator], httpx.Client],
) -> None:
    sim = small()
    client = serve(sim)
    sim.faults.drift_between_pages = 1
    before = [record["Id"] for record in sim.records(ACCESS_TOKENS)]
    first = client.get(ACCESS_TOKENS.path, params={"size": 10}).json()
    after = [record["Id"] for record in sim.records(ACCESS_TOKENS)]
    [gone] = set(before) - set(after)
    [new] = set(after) - set(before)
    assert gone in [record["Id"] for record in first["Records"]] and new > max(before)
    second = client.get(ACCESS_TOKENS.path, params={"size": 10, "page": 2}).json()
    assert second["TotalItems"] == first["TotalItems"] and second["Records"][0]["Id"] == before[11]
    assert sim.faults.drift_between_pages == 0


def test_a_growing_total_adds_a_page_of_records_with_every_page(serve: Callable[[Simulator], httpx.Client]) -> None:
    sim = small()
    client = serve(sim)
    sim.faults.growing_total = True
    totals = [
        client.get(ACCESS_TOKENS.path, params={"size": 10, "page": page}).json()["TotalItems"] for page in (1, 2, 3)
    ]
    assert totals == [40, 50, 60]


def test_cli_switches_make_a_live_style_server() -> None:
    arguments = ["--tokens", "150", "--contracts", "2", "--passes", "2", "--page-cap", "100"]
    arguments += ["--pages-from-requested-size", "--long-ids", "--tick-fractions", "--business-dates-utc"]
    arguments += ["--filter-utc-offset-hours", "-5", "--lone-surrogate", "--drift-between-pages", "1"]
    with running_simulator(arguments) as simulator:
        answer = httpx.get(
            f"{simulator.base_url}/{ACCESS_TOKENS.path}",
            params={"size": 1000},
            auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD),
        ).json()
        assert (len(answer["Records"]), answer["TotalPages"], answer["TotalItems"]) == (100, 1, 150)
        assert min(record["Id"] for record in answer["Records"]) > 2**32
        assert re.fullmatch(r".*\.\d{1,7}Z", answer["Records"][0]["UpdatedOn"])
        assert answer["Records"][0]["Description"] == "Front desk \ud83d"
        simulator.process.send_signal(signal.SIGTERM)
        assert simulator.process.wait(timeout=5) == 0
