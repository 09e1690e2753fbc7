"""Pipeline health: processing jobs (cycles, backfills, evaluations, retraining), the latest
gate verdicts, and the model registry with forecast skill per horizon."""

from datetime import timedelta

import streamlit as st

from dashboard import charts, data
from dashboard.common import chart, data_end, read

st.title("Pipeline health")
end = data_end()
jobs = read("jobs")
if len(jobs):
    last = jobs.iloc[0]
    failed = int((jobs["status"] == "failed").sum())
    cols = st.columns(3)
    cols[0].metric("last job", f"{last['job_type']} {last['status']}")
    cols[1].metric("started (UTC)", f"{last['started_at']:%m-%d %H:%M}")
    cols[2].metric(f"failed of last {len(jobs)}", failed)
st.subheader("Processing jobs")
chart(charts.job_durations(jobs), "No job recorded yet.")
if len(jobs):
    st.dataframe(jobs, hide_index=True)

st.subheader("Quality gates")
runs = read("gate_runs", 5)
if len(runs):
    st.dataframe(runs[["run_id", "checked_at", "stages", "checks", "verdict"]], hide_index=True)
else:
    st.caption("No gate has run yet.")

st.subheader("Model registry")
models = read("models")
if len(models):
    st.dataframe(models, hide_index=True)
else:
    st.caption("No model registered yet (`water train`).")

st.subheader("Forecast skill per horizon, last 7 days (all nodes)")
outcomes = read("forecast_outcomes", None, end - timedelta(days=7))
chart(
    charts.skill_by_horizon(data.skill_by_horizon(outcomes)),
    "No forecast has met its actual yet (forecasts need their target hour to pass).",
)
