"""Streamlit entry point: `water dashboard` runs `streamlit run dashboard/app.py`.

One navigation over six pages (views/); each page is a plain script that reads through
dashboard.common, so a page can also be run and tested on its own (AppTest.from_file).
"""

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).parent / "views"
PAGES = [
    st.Page(VIEWS / "overview.py", title="Network overview", url_path="overview", default=True),
    st.Page(VIEWS / "node.py", title="Node", url_path="node"),
    st.Page(VIEWS / "district.py", title="District", url_path="district"),
    st.Page(VIEWS / "anomalies.py", title="Anomalies", url_path="anomalies"),
    st.Page(VIEWS / "quality.py", title="Data quality", url_path="quality"),
    st.Page(VIEWS / "pipeline.py", title="Pipeline health", url_path="pipeline"),
]

st.set_page_config(page_title="water-infrastructure", layout="wide")
st.navigation(PAGES).run()
