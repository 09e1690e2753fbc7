"""What every page shares: the target, a read-only warehouse per read, cached reads, errors.

The target comes from the environment exactly as for every `water` command (`flows.kernel.settings`);
`water dashboard --target` passes it on. Reads are cached for `CACHE_TTL_S` seconds so paging
around does not reopen the warehouse each time, and a new cycle shows within that time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st

from api.store import open_readonly
from dashboard import data
from flows.kernel.settings import ConfigError, Target, load_settings
from flows.kernel.warehouse import WarehouseError

CACHE_TTL_S = 30


def target() -> Target:
    return load_settings().target()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _cached(description: str, name: str, args: tuple) -> Any:
    """`description` (the target) keys the cache; the reader is looked up by name."""

    with open_readonly(target()) as wh:
        return getattr(data, name)(wh, *args)


def read(name: str, *args: Any) -> Any:
    """`dashboard.data.<name>(wh, *args)` on a fresh read-only connection, cached; on a
    warehouse that cannot be read, one line on the page and the page stops."""
    try:
        return _cached(target().describe(), name, args)
    except (WarehouseError, ConfigError) as exc:
        st.error(f"cannot read the warehouse: {exc}")
        st.stop()


def now() -> datetime:
    return datetime.now(UTC)


def data_end() -> datetime:
    """The newest 5-minute window end (the look-back anchor); stops the page before the
    first cycle."""
    end = read("data_end")
    if end is None:
        st.info("No windowed metrics yet: load data and run `water cycle` (or `water demo`).")
        st.stop()
    return end if end.tzinfo else end.replace(tzinfo=UTC)


def span_days(
    label: str, options: tuple[int, ...] = (1, 2, 7, 14, 35), default: int = 2
) -> timedelta:
    days = st.selectbox(
        label, options, index=options.index(default), format_func=lambda d: f"{d} day(s)"
    )
    return timedelta(days=days)


def chart(spec, empty: str) -> None:
    """An Altair chart at full width, or `empty` as a caption when there is nothing to draw."""
    if spec is None:
        st.caption(empty)
    else:
        st.altair_chart(spec, width="stretch")


def choose(label: str, options: list[str], param: str) -> str | None:
    """A select box whose choice is also in the URL (?param=…), so a page can be linked."""
    if not options:
        return None
    current = st.query_params.get(param)
    index = options.index(current) if current in options else 0
    choice = st.selectbox(label, options, index=index)
    st.query_params[param] = choice
    return choice
