"""The alert sensor on persistent instances (run-sharded SQLite and PostgreSQL), jobs run for real."""

import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from nexudus_assets.nexudus import ACCESS_TOKENS
from nexudus_assets.resources import ALERT_DEADLINE_SECONDS, AlertWebhookResource
from nexudus_assets_tests.utils import DaemonKilled, Project

CHECK = "access_tokens.minutes_left_within_included"


@pytest.fixture
def make_project(start_simulator, tmp_path, dagster_instance):
    running = start_simulator(seed=21, tokens=200, contracts=10, passes=10)

    def make(**kwargs) -> Project:
        project = Project(running, tmp_path / "warehouse.duckdb", **kwargs)
        project.instance = dagster_instance
        return project

    return make


class Sensor:
    """Ticks the alert sensor as the daemon does: the cursor a tick returns is the next one's."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.cursor: str | None = None

    def tick(self, alerts: AlertWebhookResource | None = None, *, keep_cursor: bool = True):
        sensor = self.project.defs.resolve_sensor_def("nexudus_alerts")
        context = dg.build_sensor_context(
            instance=self.project.instance, cursor=self.cursor, resources={"alerts": alerts or self.project.alerts}
        )
        result = sensor.evaluate_tick(context)
        if keep_cursor:
            self.cursor = result.cursor
        return result


def break_token(project: Project, **fields) -> dict:
    token = dict(project.sim.records(ACCESS_TOKENS)[0])
    project.sim.put_raw(ACCESS_TOKENS, {**token, "Id": 7, **fields})
    return token


def test_a_check_failing_after_the_first_tick_alerts_once_and_recovers_once(make_project, webhook):
    project = make_project(webhook=webhook.url)
    sensor = Sensor(project)
    sensor.tick()  # the sensor was running before anything failed
    token = break_token(project, MinutesIncluded=60, MinutesLeft=90)
    project.run()
    sensor.tick()
    [text] = webhook.texts()
    assert f"{CHECK} (WARN)" in text and "7" in text and "offending_rows: 1" in text

    sensor.tick()
    assert len(webhook.posts) == 1, "nothing new, nothing sent"

    project.sim.put_raw(
        ACCESS_TOKENS, {**token, "Id": 7, "MinutesIncluded": 60, "MinutesLeft": 30, "UpdatedOn": "2099-01-01T00:00:00Z"}
    )
    project.run()
    sensor.tick()
    assert len(webhook.posts) == 2 and f"recovered: {CHECK}" in webhook.texts()[1]
    project.run()
    sensor.tick()
    assert len(webhook.posts) == 2, "a check that keeps passing sends nothing more"


def test_each_failed_evaluation_alerts_once_across_several_runs_in_one_tick(make_project, webhook):
    project = make_project(webhook=webhook.url)
    sensor = Sensor(project)
    break_token(project, MinutesIncluded=60, MinutesLeft=90)
    project.run()
    project.run()
    sensor.tick()
    sensor.tick()
    assert [CHECK in text for text in webhook.texts()] == [True, True], webhook.texts()


def test_an_undelivered_alert_is_sent_on_a_later_tick_and_only_once(make_project, webhook):
    project = make_project(webhook=webhook.url)
    sensor = Sensor(project)
    break_token(project, ValidFrom="2026-05-01T00:00:00", ValidTo="2026-01-01T00:00:00")
    project.run()
    webhook.status = 500
    refused = sensor.tick()
    assert "stopped" in refused.skip_message and webhook.posts == []
    assert webhook.url not in refused.skip_message
    webhook.status = 200
    sensor.tick()
    sensor.tick()
    assert len(webhook.posts) == 1 and "valid_window_ordered" in webhook.texts()[0]


def test_a_failed_run_alerts_once_without_leaking_the_password(make_project, webhook):
    project = make_project(webhook=webhook.url, password="wrong-password")
    sensor = Sensor(project)
    failed = project.run(raise_on_error=False)
    assert not failed.success
    sensor.tick()
    sensor.tick()
    [text] = [text for text in webhook.texts() if "run failed" in text]
    assert "nexudus_sync" in text and failed.run_id[:8] in text
    assert "wrong-password" not in " ".join(webhook.texts())


def test_a_daemon_killed_mid_tick_repeats_no_alert_it_had_sent(make_project, webhook):
    project = make_project(webhook=webhook.url)
    sensor = Sensor(project)
    sensor.tick()
    # Two checks fail: the window is reversed and more minutes are left than included.
    break_token(
        project, ValidFrom="2026-05-01T00:00:00", ValidTo="2026-01-01T00:00:00", MinutesIncluded=60, MinutesLeft=90
    )
    project.run()

    class DiesBeforeTheSecondAlert(AlertWebhookResource):
        def send(self, text, log):
            if webhook.posts:
                raise DaemonKilled
            super().send(text, log)

    with pytest.raises(DaemonKilled):  # the tick never returns, so no cursor is saved
        sensor.tick(DiesBeforeTheSecondAlert(url=webhook.url))
    assert len(webhook.posts) == 1
    sensor.tick()  # the daemon's cursor is what it was before the killed tick
    sensor.tick()
    texts = webhook.texts()
    assert len(texts) == 2, texts
    assert all(any(check in text for text in texts) for check in ("valid_window_ordered", CHECK))


class Misbehaving:
    """A webhook on 127.0.0.1 that redirects every post, or answers 200 and then trickles its body."""

    def __init__(self, *, redirect_to: str | None = None, trickle_seconds: float = 0.0) -> None:
        self.posts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts += 1
                if redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                try:
                    for _ in range(100):
                        self.wfile.write(b"o")
                        self.wfile.flush()
                        time.sleep(trickle_seconds)
                except OSError:
                    pass  # the client gave up, as it should

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_redirect_is_not_followed_and_counts_as_undelivered(webhook):
    redirecting = Misbehaving(redirect_to=webhook.url)
    try:
        with pytest.raises(RuntimeError, match="HTTP 302, not 2xx") as undelivered:
            AlertWebhookResource(url=redirecting.url).send("Nexudus run failed", logging.getLogger("test"))
    finally:
        redirecting.close()
    assert redirecting.posts == 1 and webhook.posts == []
    assert "secret-token" not in str(undelivered.value)


def test_a_trickling_webhook_is_cut_off_at_the_deadline():
    trickling = Misbehaving(trickle_seconds=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="within 10s"):
            AlertWebhookResource(url=trickling.url).send("Nexudus run failed", logging.getLogger("test"))
    finally:
        trickling.close()
    # The body would take 50 s to arrive; the send gives up at its deadline, one piece late at most.
    assert time.monotonic() - started < ALERT_DEADLINE_SECONDS + 5


def test_alert_texts_are_plain_without_slack_emoji_codes(make_project, webhook):
    project = make_project(webhook=webhook.url)
    sensor = Sensor(project)
    sensor.tick()
    token = break_token(project, MinutesIncluded=60, MinutesLeft=90)
    project.run()
    project.sim.put_raw(
        ACCESS_TOKENS, {**token, "Id": 7, "MinutesIncluded": 60, "MinutesLeft": 30, "UpdatedOn": "2099-01-01T00:00:00Z"}
    )
    project.run()
    sensor.tick()
    texts = webhook.texts()
    assert len(texts) == 2 and texts[0].startswith("Nexudus check failed") and "recovered" in texts[1]
    assert not any(re.search(r":[a-z_]+:", text) for text in texts)
