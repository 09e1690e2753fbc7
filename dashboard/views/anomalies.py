"""Anomalies: the incidents (anomaly_events: open ones and those seen in the span), then the
detections behind them, filtered, with the evidence of each (actual against expected, the
detector and its details)."""

import json
from datetime import timedelta

import streamlit as st

from dashboard import charts
from dashboard.common import chart, data_end, read

st.title("Anomalies")
end = data_end()
cols = st.columns(4)
hours = cols[0].selectbox("last", (24, 72, 168, 720), index=2, format_func=lambda h: f"{h} h")
incidents = read("events", end - timedelta(hours=hours))
open_count = int((incidents["status"] == "open").sum()) if len(incidents) else 0
st.subheader(f"Events ({open_count} open, {len(incidents)} in the last {hours} h)")
if len(incidents):
    st.dataframe(incidents.drop(columns=["event_id"]), hide_index=True)
else:
    st.success("No warning or critical event open or seen in this span.")

st.subheader("Detections")
recent = read("anomalies", end - timedelta(hours=hours))
severities = sorted(recent["severity"].dropna().unique()) if len(recent) else []
types = sorted(recent["anomaly_type"].dropna().unique()) if len(recent) else []
nodes = sorted(recent["node_id"].dropna().unique()) if len(recent) else []
chosen_severity = cols[1].multiselect(
    "severity", severities, default=[s for s in severities if s != "info"]
)
chosen_types = cols[2].multiselect("type", types)
chosen_nodes = cols[3].multiselect("node", nodes)

shown = recent
if len(shown):
    if chosen_severity:
        shown = shown[shown["severity"].isin(chosen_severity)]
    if chosen_types:
        shown = shown[shown["anomaly_type"].isin(chosen_types)]
    if chosen_nodes:
        shown = shown[shown["node_id"].isin(chosen_nodes)]

st.caption(
    f"{len(shown)} of {len(recent)} anomalies up to {end:%Y-%m-%d %H:%M} UTC (at most 500 newest)"
)
chart(charts.anomalies_per_day(shown), "No anomaly matches.")
if len(shown):
    table = shown.drop(columns=["details"], errors="ignore")
    st.dataframe(table, hide_index=True)
    st.subheader("Evidence")
    pick = st.selectbox(
        "anomaly",
        list(range(len(shown))),
        format_func=lambda i: (
            f"{shown.iloc[i]['window_start']:%Y-%m-%d %H:%M} · {shown.iloc[i]['node_id']} · "
            f"{shown.iloc[i]['anomaly_type']} ({shown.iloc[i]['severity']})"
        ),
    )
    row = shown.iloc[pick]
    c = st.columns(3)
    c[0].metric("actual", "–" if row.get("actual_value") is None else f"{row['actual_value']:.3g}")
    c[1].metric(
        "expected", "–" if row.get("expected_value") is None else f"{row['expected_value']:.3g}"
    )
    c[2].metric("detector", str(row.get("detection_method")))
    details = row.get("details")
    st.json(details if isinstance(details, dict | list) else json.loads(details or "{}"))
