"""Node and platform status rules (README "Redis" and `GET /api/v1/status`): pure functions.

The expected values come from the documented contract, written out case by case: a node
without readings has no data; an alerting node (a critical or warning anomaly in the last
hour) is `anomaly` even when its readings are also old; otherwise it is `stale` once its
newest reading is more than 15 minutes old, else `ok`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.platform import DatabaseView, PlatformView
from api.routers.status import assess
from flows.kernel.contracts import node_status

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("age", "alerting", "expected"),
    [
        (None, False, "no_data"),
        (None, True, "no_data"),  # an anomaly cannot be shown for a node that never reported
        (timedelta(0), False, "ok"),
        (timedelta(minutes=15), False, "ok"),  # exactly 15 minutes: still fresh
        (timedelta(minutes=15) + US, False, "stale"),
        (timedelta(days=3), False, "stale"),
        (timedelta(0), True, "anomaly"),
        (timedelta(days=3), True, "anomaly"),  # alerting wins over stale
        (-timedelta(minutes=2), False, "ok"),  # a sensor clock slightly ahead is not stale
    ],
)
def test_node_status_rules(age, alerting, expected):
    last = None if age is None else NOW - age
    assert node_status(last, alerting, NOW) == expected


def _view(**changes) -> PlatformView:
    """A healthy platform: database and Redis up, a cycle completed a minute ago, a fresh node."""
    db = DatabaseView(
        last_cycle={"job_id": "c2", "status": "completed", "completed_at": "2026-03-01T11:59:00Z"},
        last_success={"job_id": "c2", "completed_at": "2026-03-01T11:59:00Z"},
        freshness=[{"node_id": "N1", "last_reading_at": "2026-03-01T11:58:00Z"}],
    )
    fields = {
        "checked_at": NOW,
        "database_up": True,
        "database_detail": None,
        "db": db,
        "cache_configured": True,
        "cache_up": True,
        "cache_detail": None,
        "snapshot": {"published_at": "2026-03-01T11:59:30Z"},
        "cached_nodes": None,
    }
    return PlatformView(**{**fields, **changes})


def _freshness(*ages_s: float | None) -> DatabaseView:
    rows = [
        {
            "node_id": f"N{i}",
            "last_reading_at": None if age is None else (NOW - timedelta(seconds=age)).isoformat(),
        }
        for i, age in enumerate(ages_s)
    ]
    healthy = _view().db
    return DatabaseView(
        last_cycle=healthy.last_cycle, last_success=healthy.last_success, freshness=rows
    )


def test_a_healthy_platform_is_ok_with_no_reasons():
    result = assess(_view(), stale_after_s=900)
    assert (result["status"], result["reasons"]) == ("ok", [])
    assert result["data_freshness"]["stale_nodes"] == 0


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"database_up": False}, "degraded", "database unreachable"),
        ({"cache_up": False, "cache_detail": "refused"}, "degraded", "redis: refused"),
        ({"snapshot": None}, "degraded", "redis holds no published snapshot"),
        ({"cache_configured": False}, "degraded", "redis not configured"),
        ({"db": _freshness(60, 901)}, "degraded", "1 of 2 node(s) have not reported in 900s"),
        ({"db": _freshness(60, None)}, "degraded", "1 of 2 node(s)"),  # never reported = stale
        ({"db": _freshness(901, 2000)}, "stale", "no node has reported in the last 900s"),
        ({"snapshot": {"published_at": "2026-03-01T11:44:59Z"}}, "stale", "redis snapshot"),
        (
            {"db": DatabaseView(freshness=[], last_cycle=None)},
            "stale",
            "no processing cycle has been recorded",
        ),
        (
            {"db": DatabaseView(last_cycle={"job_id": "c3", "status": "failed"}, freshness=[])},
            "degraded",
            "last cycle c3 failed",
        ),
    ],
)
def test_each_failing_check_is_named(changes, status, reason):
    result = assess(_view(**changes), stale_after_s=900)
    assert result["status"] == status
    assert any(r.startswith(reason) for r in result["reasons"]), result["reasons"]


def test_degraded_wins_over_stale_and_both_reasons_are_kept():
    view = _view(database_up=True, cache_up=False, cache_detail="refused", db=_freshness(5000))
    result = assess(view, stale_after_s=900)
    assert result["status"] == "degraded"
    assert result["is_degraded"] and result["is_stale"]
    assert result["reasons"] == ["redis: refused", "no node has reported in the last 900s"]
