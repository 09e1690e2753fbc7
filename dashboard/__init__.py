"""The operations dashboard (`water dashboard`): Streamlit pages over the published tables,
read-only. See docs/dashboard.md."""
