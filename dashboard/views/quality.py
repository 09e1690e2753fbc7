"""Data quality: per node and day (completeness, validity, consistency, timeliness), and the
quality-gate runs with the platform's verdict. This page is the offline replacement for GX
Data Docs: a failed `warning` expectation is recorded but the run passed; only a `critical`
failure fails it (GX's own pages call both "Failed")."""

import streamlit as st

from dashboard import charts
from dashboard.common import chart, data_end, read, span_days

st.title("Data quality")
end = data_end()
span = span_days("span", default=14)
quality = read("quality_daily", end - span)

st.subheader("Overall score per node and day")
chart(charts.quality_heatmap(quality), "No data-quality rows in the span.")
if len(quality):
    worst = quality.sort_values("overall_score").head(20)
    st.caption("Lowest node-days")
    st.dataframe(worst, hide_index=True)

st.subheader("Quality gates (Great Expectations)")
runs = read("gate_runs")
if not len(runs):
    st.info("No gate has run yet (`water cycle` or `water validate`).")
    st.stop()
last = runs.iloc[0]
verdict = last["verdict"]
message = (
    f"Latest gate run {last['run_id']} ({last['stages']}) at {last['checked_at']:%Y-%m-%d %H:%M} UTC: "
    f"**{verdict}** — {last['checks']} checks, {last['critical_failed']} critical and "
    f"{last['warning_failed']} warning failure(s)"
)
(st.error if verdict == "failed" else st.warning if last["warning_failed"] else st.success)(message)
st.dataframe(runs, hide_index=True)
run_id = st.selectbox("failures of run", list(runs["run_id"]))
failures = read("gate_failures", run_id)
if len(failures):
    st.dataframe(failures, hide_index=True)
else:
    st.caption("Every expectation of this run passed.")
