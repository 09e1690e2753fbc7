"""District: the daily water balance (system input = metered consumption + losses), NRW,
and the minimum night flow against its baseline with the detector's alarms."""

import pandas as pd
import streamlit as st

from dashboard import charts
from dashboard.common import chart, choose, data_end, read, span_days

st.title("District")
end = data_end()
names = read("districts")
left, right = st.columns([3, 1])
with left:
    district = choose("district", names, "district")
with right:
    span = span_days("span", default=35)
if district is None:
    st.info("No water balance yet: it needs district metadata (`water nodes`) and a cycle.")
    st.stop()

balance = read("daily_balance", district)
balance = balance[balance["window_start"] >= end - span] if len(balance) else balance
alarms = read("night_flow_alarms", district, end - span)

complete = balance[balance["is_complete"].fillna(False).astype(bool)] if len(balance) else balance
if len(complete):
    last = complete.iloc[-1]
    cols = st.columns(4)
    cols[0].metric("last complete day", str(pd.Timestamp(last["local_date"]).date()))
    cols[1].metric("system input m³", f"{last['system_input_volume_m3']:,.0f}")
    cols[2].metric(
        "NRW %", "–" if last["water_loss_percent"] is None else f"{last['water_loss_percent']:.1f}"
    )
    cols[3].metric(
        "min night flow L/s",
        "–" if last["min_night_flow_lps"] is None else f"{last['min_night_flow_lps']:.2f}",
    )

st.subheader("Daily water balance and NRW")
chart(charts.daily_balance(balance), "No complete daily balance in the span.")
st.subheader("Minimum night flow, baseline and alarms")
chart(charts.night_flow(balance, alarms), "No night flow in the span.")
if len(alarms):
    st.dataframe(alarms, hide_index=True)

incomplete = (
    balance[~balance["is_complete"].fillna(False).astype(bool)] if len(balance) else balance
)
if len(incomplete):
    st.caption("Days without a complete balance, and why")
    st.dataframe(incomplete[["local_date", "incomplete_reasons"]], hide_index=True)
