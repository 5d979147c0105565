"""Freshness: the raw assets' freshness policies show it in the UI; the `synced_recently` checks,
run by the `nexudus_freshness` job, alert it on every storage (run-sharded SQLite and PostgreSQL)."""

import dagster as dg

from nexudus_assets.nexudus import ENTITIES
from nexudus_assets_tests.test_alerts import Sensor
from nexudus_assets_tests.utils import Project


def test_a_sync_that_stopped_is_alerted_by_the_freshness_job_and_its_recovery_too(
    start_simulator, tmp_path, dagster_instance, webhook
):
    project = Project(
        start_simulator(seed=23, tokens=40, contracts=10, passes=10),
        tmp_path / "warehouse.duckdb",
        webhook=webhook.url,
        instance=dagster_instance,
    )
    sensor = Sensor(project)
    sensor.tick()
    project.run()
    # Every raw asset carries the policy the UI shows, on the limit the checks use.
    graph = project.defs.resolve_asset_graph()
    for entity in ENTITIES:
        policy = graph.get(dg.AssetKey(entity.table)).freshness_policy
        assert isinstance(policy, dg.FreshnessPolicy) and policy.fail_window.to_timedelta().total_seconds() == 3 * 3600

    with project.warehouse.get_connection() as conn:  # the last sync, as if a day ago
        conn.execute("UPDATE raw._sync_log SET finished_at = finished_at - INTERVAL 24 HOUR")
    project.run("nexudus_freshness")
    sensor.tick()
    stale = {text for text in webhook.texts() if "synced_recently" in text}
    assert len(stale) == len(ENTITIES)
    assert all("(WARN)" in text for text in stale)
    assert {entity.table for entity in ENTITIES for text in stale if f"{entity.table}.synced_recently" in text} == {
        entity.table for entity in ENTITIES
    }

    project.run()
    project.run("nexudus_freshness")
    sensor.tick()
    recovered = [text for text in webhook.texts() if "recovered" in text and "synced_recently" in text]
    assert len(recovered) == len(ENTITIES)
