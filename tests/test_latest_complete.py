"""Latest means latest complete: the water balance that Redis and the API serve, right after
local midnight, against an independent computation from the generated readings.

The data ends at 00:20 local time (23:20 UTC); one node falls silent at 23:40 local the
evening before. By the closing rule (a period is complete once every node of the area has
reported past its end, or the network's newest reading is 2 hours past it), the silent node's
district and the whole network still wait for the day that just ended, the other districts
have it; the day that just began is the partial one everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pandas as pd
import pytest

from api.queries import efficiency as api_efficiency
from api.store import open_readonly
from flows.kernel.contracts import NETWORK_DISTRICT, NETWORK_EFFICIENCY_KEY, district_key
from flows.kernel.dbt_runner import run_dbt
from flows.kernel.warehouse import connect
from flows.loaders.loading import load_synthetic
from flows.loaders.synthetic import Fault, SyntheticConfig, generate, node_metadata
from flows.publish.publisher import publish
from tests.orch_support import RedisServer
from tests.warehouses import fresh_warehouse

LOCAL_TZ = "Europe/Rome"
GRACE = timedelta(hours=2)  # dbt var window_close_grace_s
SILENT_NODE = "N0004"
START = datetime(2024, 3, 9, 23, 0, tzinfo=UTC)  # local midnight, 2024-03-10
CONFIG = SyntheticConfig(
    nodes=16,
    days=2 + 20 / 1440,  # to 2024-03-11 23:20 UTC = 00:20 local on the 12th
    cadence_s=300,
    seed=11,
    start=START,
    faults=(Fault("gap", SILENT_NODE, datetime(2024, 3, 11, 22, 40, tzinfo=UTC)),),
)


def expected_periods() -> dict[str, dict[str, datetime | None]]:
    """area -> window_start of the latest complete and the open hour and local day, from the
    readings themselves (pandas), by the documented closing rule."""
    readings = generate(CONFIG)
    readings["timestamp"] = pd.to_datetime(readings["timestamp"], utc=True)
    districts = node_metadata(CONFIG).set_index("node_id")["district"]
    last = readings.groupby("node_id")["timestamp"].max()
    closed_until = last.clip(lower=last.max() - GRACE)
    areas = {d: list(nodes) for d, nodes in districts.groupby(districts).groups.items()}
    areas[NETWORK_DISTRICT] = list(districts.index)

    def local_midnight(ts: pd.Timestamp) -> pd.Timestamp:
        return ts.tz_convert(LOCAL_TZ).normalize().tz_convert(UTC)

    out = {}
    for area, nodes in areas.items():
        closing, newest = closed_until[nodes].min(), last[nodes].max()
        complete_hour = (closing - timedelta(hours=1)).floor("h")
        open_hour = newest.floor("h")
        complete_day_end = local_midnight(closing)
        open_day = local_midnight(newest)
        out[area] = {
            "hourly": complete_hour,
            "hourly_partial": open_hour if open_hour > complete_hour else None,
            "daily": local_midnight(complete_day_end - timedelta(hours=1)),
            "daily_partial": open_day if open_day >= complete_day_end else None,
        }
    return out


def as_time(value) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value).tz_convert(UTC)


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def built(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"latest-{request.param}")
    with fresh_warehouse(request.param, directory) as target:
        with connect(target) as wh:
            load_synthetic(wh, CONFIG, progress=False, landing_dir=directory)
        run_dbt(target, "seed", [])
        run_dbt(target, "run", [])
        run_dbt(target, "test", ["--select", "network_efficiency_latest"])
        yield target, directory


def _check(entries: dict[str, dict], expected: dict[str, dict]) -> None:
    assert sorted(entries) == sorted(expected)
    for area, periods in expected.items():
        for period, start in periods.items():
            row = entries[area][period]
            got = None if row is None else as_time(row["window_start"])
            assert got == start, f"{area} {period}: {got} != {start}"
            if row is not None:
                status = "partial" if period.endswith("_partial") else "complete"
                assert row["period_status"] == status


def test_redis_and_api_serve_the_latest_complete_periods(built):
    target, directory = built
    expected = expected_periods()
    silent_district = node_metadata(CONFIG).set_index("node_id").loc[SILENT_NODE, "district"]
    # The fault matters: the silent node's district still waits for the day that just ended.
    others = [d for d in expected if d not in (silent_district, NETWORK_DISTRICT)]
    assert expected[silent_district]["daily"] < expected[others[0]]["daily"]
    assert expected[others[0]]["daily"] == pd.Timestamp("2024-03-10 23:00", tz=UTC)
    assert expected[others[0]]["daily_partial"] == pd.Timestamp("2024-03-11 23:00", tz=UTC)

    server = RedisServer(directory / "redis").start()
    try:
        client = server.client()
        publish(target, "cycle-latest", client=client)
        cached = {
            area: orjson.loads(
                client.get(
                    NETWORK_EFFICIENCY_KEY if area == NETWORK_DISTRICT else district_key(area)
                )
            )
            for area in expected
        }
    finally:
        server.stop()
    _check(cached, expected)
    # the day that just ended has its balance (not the all-null day that just began)
    assert cached[others[0]]["daily"]["system_input_volume_m3"] is not None

    with open_readonly(target) as wh:
        body = api_efficiency(wh)
    from_api = {d.pop("district"): d for d in body["districts"]}
    from_api[NETWORK_DISTRICT] = body["network"]
    _check(from_api, expected)
