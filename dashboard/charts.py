"""Altair charts of the dashboard: plain functions from DataFrames to chart specs.

Vega-Lite is rendered by the browser from the JavaScript that ships inside Streamlit's wheel,
so nothing is fetched from the internet. No base-map tiles either: the network "map" is the
nodes drawn at their coordinates (tiles would need a tile server). Each function returns None
when there is nothing to draw, and the page says so instead of showing an empty frame.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

STATUS_COLOURS = alt.Scale(
    domain=["ok", "stale", "anomaly", "no_data"],
    range=["#2e7d32", "#f9a825", "#c62828", "#9e9e9e"],
)
FORECAST_COLOURS = alt.Scale(
    domain=["actual", "past forecast", "newest forecast"], range=["black", "#c62828", "#1565c0"]
)
SEVERITY_COLOURS = alt.Scale(
    domain=["critical", "warning", "info"], range=["#c62828", "#f9a825", "#1565c0"]
)


def node_map(nodes: pd.DataFrame) -> alt.Chart | None:
    located = nodes.dropna(subset=["latitude", "longitude"]) if len(nodes) else nodes
    if not len(located):
        return None
    return (
        alt.Chart(located)
        .mark_circle(size=140, opacity=0.85, stroke="black", strokeWidth=0.5)
        .encode(
            longitude="longitude:Q",
            latitude="latitude:Q",
            color=alt.Color("status:N", scale=STATUS_COLOURS, title="status"),
            shape=alt.Shape("district:N", title="district"),
            tooltip=[
                "node_id",
                "node_name",
                "district",
                "balance_role",
                "status",
                "last_reading_at",
            ],
        )
        .project(type="mercator")
        .properties(height=380)
    )


def status_by_district(nodes: pd.DataFrame) -> alt.Chart | None:
    if not len(nodes):
        return None
    frame = nodes.assign(district=nodes["district"].fillna("(unknown)"))
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("district:N", title=None),
            x=alt.X("count():Q", title="nodes"),
            color=alt.Color("status:N", scale=STATUS_COLOURS),
            tooltip=["district", "status", "count()"],
        )
        .properties(height=max(120, 28 * frame["district"].nunique()))
    )


def anomalies_per_day(anomalies: pd.DataFrame) -> alt.Chart | None:
    if not len(anomalies):
        return None
    return (
        alt.Chart(anomalies)
        .mark_bar()
        .encode(
            x=alt.X("yearmonthdate(window_start):T", title="day (UTC)"),
            y=alt.Y("count():Q", title="anomalies"),
            color=alt.Color("severity:N", scale=SEVERITY_COLOURS),
            tooltip=["yearmonthdate(window_start):T", "severity", "count()"],
        )
        .properties(height=220)
    )


def measurement_with_anomalies(
    series: pd.DataFrame, anomalies: pd.DataFrame, measure: str, unit: str
) -> alt.Chart | None:
    """avg_<measure> with its min–max band, anomalies on that measurement as marks."""
    avg, lo, hi = f"avg_{measure}", f"min_{measure}", f"max_{measure}"
    frame = series.dropna(subset=[avg]) if len(series) else series
    if not len(frame):
        return None
    x = alt.X("window_start:T", title="window start (UTC)")
    base = alt.Chart(frame)
    layers = [
        base.mark_area(opacity=0.25).encode(x=x, y=alt.Y(f"{lo}:Q", title=unit), y2=f"{hi}:Q"),
        base.mark_line().encode(x=x, y=f"{avg}:Q", tooltip=["window_start", avg, lo, hi]),
    ]
    if len(anomalies):
        marks = anomalies[
            anomalies["measurement_type"].isin([measure, None])
            | anomalies["measurement_type"].isna()
        ]
        if len(marks):
            layers.append(
                alt.Chart(marks)
                .mark_rule(strokeWidth=2, opacity=0.7)
                .encode(
                    x="window_start:T",
                    color=alt.Color("severity:N", scale=SEVERITY_COLOURS),
                    tooltip=[
                        "window_start",
                        "anomaly_type",
                        "severity",
                        "actual_value",
                        "expected_value",
                    ],
                )
            )
    return alt.layer(*layers).properties(height=260)


def forecast_against_actual(outcomes: pd.DataFrame, latest: pd.DataFrame) -> alt.Chart | None:
    """Past forecasts (interval band + prediction) with the flow that then happened, and the
    newest forecast ahead."""
    past = outcomes.sort_values("target_timestamp").drop_duplicates("target_timestamp", keep="last")
    if not len(past) and not len(latest):
        return None
    x = alt.X("target_timestamp:T", title="hour (UTC)")
    layers = []
    for frame, label in ((past, "past forecast"), (latest, "newest forecast")):
        if not len(frame):
            continue
        tagged = frame.assign(series=label)
        base = alt.Chart(tagged)
        layers += [
            base.mark_area(opacity=0.2).encode(
                x=x,
                y=alt.Y("flow_rate_lower:Q", title="flow L/s"),
                y2="flow_rate_upper:Q",
                color=alt.Color("series:N", title=None, scale=FORECAST_COLOURS),
            ),
            base.mark_line(strokeDash=[4, 3]).encode(
                x=x,
                y="flow_rate_predicted:Q",
                color=alt.Color("series:N", scale=FORECAST_COLOURS),
                tooltip=[
                    "target_timestamp",
                    "flow_rate_predicted",
                    "flow_rate_lower",
                    "flow_rate_upper",
                ],
            ),
        ]
    if len(past):
        actual = past.dropna(subset=["flow_rate_actual"]).assign(series="actual")
        layers.append(
            alt.Chart(actual)
            .mark_line()
            .encode(
                x=x,
                y="flow_rate_actual:Q",
                color=alt.Color("series:N", scale=FORECAST_COLOURS),
                tooltip=["target_timestamp", "flow_rate_actual"],
            )
        )
    return alt.layer(*layers).properties(height=280)


def daily_balance(balance: pd.DataFrame) -> alt.Chart | None:
    """Per day: metered consumption and water loss stacked (= system input), NRW % above."""
    frame = balance.dropna(subset=["system_input_volume_m3"]) if len(balance) else balance
    if not len(frame):
        return None
    parts = frame.melt(
        id_vars=["local_date"],
        value_vars=["metered_consumption_m3", "water_loss_m3"],
        var_name="component",
        value_name="m3",
    )
    bars = (
        alt.Chart(parts)
        .mark_bar()
        .encode(
            x=alt.X("local_date:T", title="day (local)"),
            y=alt.Y("m3:Q", title="m³"),
            color=alt.Color("component:N", title=None),
            tooltip=["local_date", "component", "m3"],
        )
        .properties(height=240)
    )
    nrw = (
        alt.Chart(frame)
        .mark_line(point=True, color="#c62828")
        .encode(
            x=alt.X("local_date:T", title="day (local)"),
            y=alt.Y("water_loss_percent:Q", title="NRW %"),
            tooltip=["local_date", "water_loss_percent", "efficiency_percent"],
        )
        .properties(height=140)
    )
    return alt.vconcat(nrw, bars)


def night_flow(balance: pd.DataFrame, alarms: pd.DataFrame) -> alt.Chart | None:
    """Minimum night flow against its baseline, with the detector's alarms (leak onsets)."""
    frame = balance.dropna(subset=["min_night_flow_lps"]) if len(balance) else balance
    if not len(frame):
        return None
    x = alt.X("local_date:T", title="night of (local)")
    base = alt.Chart(frame)
    layers = [
        base.mark_line(point=True).encode(
            x=x,
            y=alt.Y("min_night_flow_lps:Q", title="L/s"),
            tooltip=[
                "local_date",
                "min_night_flow_lps",
                "min_night_flow_baseline_lps",
                "min_night_flow_change_percent",
            ],
        ),
        base.mark_line(strokeDash=[6, 4], color="gray").encode(
            x=x, y="min_night_flow_baseline_lps:Q"
        ),
    ]
    if len(alarms):
        layers.append(
            alt.Chart(alarms)
            .mark_rule(strokeWidth=2)
            .encode(
                x=alt.X("yearmonthdate(window_start):T"),
                color=alt.Color("severity:N", scale=SEVERITY_COLOURS),
                tooltip=[
                    "window_start",
                    "anomaly_type",
                    "severity",
                    "actual_value",
                    "expected_value",
                ],
            )
        )
    return alt.layer(*layers).properties(height=240)


def quality_heatmap(quality: pd.DataFrame) -> alt.Chart | None:
    if not len(quality):
        return None
    return (
        alt.Chart(quality)
        .mark_rect()
        .encode(
            x=alt.X("yearmonthdate(window_start):O", title="day (UTC)"),
            y=alt.Y("node_id:N", title=None),
            color=alt.Color(
                "overall_score:Q",
                scale=alt.Scale(domain=[0, 1], scheme="redyellowgreen"),
                title="score",
            ),
            tooltip=[
                "node_id",
                "window_start",
                "overall_score",
                "completeness",
                "validity",
                "consistency",
                "timeliness",
                "quality_notes",
            ],
        )
        .properties(height=max(200, 22 * quality["node_id"].nunique()))
    )


def job_durations(jobs: pd.DataFrame) -> alt.Chart | None:
    frame = jobs.dropna(subset=["started_at"]) if len(jobs) else jobs
    if not len(frame):
        return None
    return (
        alt.Chart(frame)
        .mark_circle(size=90)
        .encode(
            x=alt.X("started_at:T", title="started (UTC)"),
            y=alt.Y("duration_seconds:Q", title="seconds"),
            color=alt.Color(
                "status:N",
                scale=alt.Scale(
                    domain=["completed", "running", "skipped", "failed"],
                    range=["#2e7d32", "#1565c0", "#9e9e9e", "#c62828"],
                ),
            ),
            shape="job_type:N",
            tooltip=[
                "job_type",
                "status",
                "started_at",
                "duration_seconds",
                "rows_in",
                "error_message",
            ],
        )
        .properties(height=240)
    )


def skill_by_horizon(skill: pd.DataFrame) -> alt.Chart | None:
    """MASE per forecast horizon: below 1 the model beats seasonal-naive."""
    if not len(skill):
        return None
    bars = (
        alt.Chart(skill)
        .mark_bar()
        .encode(
            x=alt.X("horizon_hours:O", title="horizon (hours)"),
            y=alt.Y("mase:Q", title="MASE (vs seasonal-naive)"),
            tooltip=["horizon_hours", "n", "mae", "mase", "interval_coverage"],
        )
    )
    one = (
        alt.Chart(pd.DataFrame({"y": [1.0]}))
        .mark_rule(color="#c62828", strokeDash=[4, 3])
        .encode(y="y:Q")
    )
    return alt.layer(bars, one).properties(height=220)
