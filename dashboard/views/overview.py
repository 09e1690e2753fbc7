"""Network overview: every node by district with its status, on a map where coordinates
exist, the open events (incidents), and the anomalies of the last 24 hours still worth a look
(critical and warning)."""

from datetime import timedelta

import streamlit as st

from dashboard import charts
from dashboard.common import chart, data_end, now, read
from flows.kernel.contracts import STALE_AFTER

st.title("Network overview")
end = data_end()
nodes = read("nodes", now())
recent = read("anomalies", end - timedelta(hours=24))
alerting = recent[recent["severity"].isin(["critical", "warning"])] if len(recent) else recent

counts = nodes["status"].value_counts() if len(nodes) else {}
cols = st.columns(5)
cols[0].metric("nodes", len(nodes))
for col, status in zip(cols[1:], ("ok", "stale", "anomaly", "no_data"), strict=True):
    col.metric(status, int(counts.get(status, 0)))
st.caption(
    f"Data up to {end:%Y-%m-%d %H:%M} UTC; status as of now"
    f" (stale after {STALE_AFTER.total_seconds() / 60:.0f} minutes)."
)

left, right = st.columns([3, 2])
with left:
    st.subheader("Map")
    chart(charts.node_map(nodes), "No node has coordinates (latitude/longitude in `water nodes`).")
with right:
    st.subheader("Nodes by district")
    chart(charts.status_by_district(nodes), "No nodes yet.")

incidents = read("events", end - timedelta(hours=24))
open_events = incidents[incidents["status"] == "open"] if len(incidents) else incidents
st.subheader(f"Open events ({len(open_events)})")
if len(open_events):
    st.dataframe(
        open_events[
            ["severity", "anomaly_type", "subject", "district", "started_at", "last_seen_at"]
        ],
        hide_index=True,
    )
else:
    st.success("No warning or critical event is open.")

st.subheader(f"Open anomalies, last 24 h ({len(alerting)})")
if len(alerting):
    st.dataframe(
        alerting[
            [
                "window_start",
                "severity",
                "anomaly_type",
                "node_id",
                "district",
                "measurement_type",
                "actual_value",
                "expected_value",
            ]
        ],
        hide_index=True,
    )
else:
    st.success("No critical or warning anomaly in the last 24 hours.")

st.subheader("Nodes")
st.dataframe(
    nodes.sort_values(["district", "node_id"], na_position="last"),
    hide_index=True,
    column_config={"node_id": st.column_config.TextColumn("node")},
)
