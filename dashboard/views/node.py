"""Node: flow and pressure with the anomalies marked, and the flow forecast with its 90 %
interval against what then happened."""

import streamlit as st

from dashboard import charts, data
from dashboard.common import chart, choose, data_end, now, read, span_days

st.title("Node")
end = data_end()
nodes = read("nodes", now())
labels = {
    r.node_id: f"{r.node_id} · {r.node_name or ''} ({r.district or 'no district'})"
    for r in nodes.itertuples()
}
left, mid, right = st.columns([3, 1, 1])
with left:
    node_id = choose("node", list(labels), "node_id")
with mid:
    window = st.selectbox("window", ("5min", "1hour", "1day"), index=1)
with right:
    span = span_days("span")
if node_id is None:
    st.info("No nodes yet.")
    st.stop()
st.caption(labels[node_id])

start = end - span
series = read("node_series", node_id, window, start, end)
marks = read("anomalies", start, end, node_id)

st.subheader("Flow (L/s)")
chart(
    charts.measurement_with_anomalies(series, marks, "flow_rate", "L/s"),
    "This node reports no flow.",
)
st.subheader("Pressure (bar)")
chart(
    charts.measurement_with_anomalies(series, marks, "pressure", "bar"),
    "This node reports no pressure.",
)

st.subheader("Forecast: 90 % interval against what happened")
outcomes = read("forecast_outcomes", node_id, start)
latest = read("forecast", node_id)
chart(
    charts.forecast_against_actual(outcomes, latest),
    "No forecast for this node yet (`water train`, then a cycle scores it).",
)
if len(outcomes):
    skill = data.skill_by_horizon(outcomes)
    st.caption(
        "This node's forecast skill per horizon over the span (MASE < 1 beats seasonal-naive)"
    )
    st.dataframe(skill, hide_index=True)

st.subheader(f"Anomalies in the span ({len(marks)})")
if len(marks):
    st.dataframe(marks.drop(columns=["details"], errors="ignore"), hide_index=True)
