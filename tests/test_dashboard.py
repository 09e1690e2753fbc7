"""The operations dashboard on demo data: every page through Streamlit's headless AppTest,
checked against the warehouse read directly; then one headless-Chromium pass over a running
`water dashboard` (charts drawn, no error element; screenshots into docs/screenshots/) and over
the API's offline /docs and /redoc.

One small demo (`water demo --nodes 8 --days 30`: enough history to train the models, so the
forecast and registry pages have content) is built once for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from flows.kernel.settings import PROJECT_ROOT, Target
from tests.orch_support import free_port, wait_http

VIEWS = PROJECT_ROOT / "dashboard" / "views"
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
PAGES = ("overview", "node", "district", "anomalies", "quality", "pipeline")
S = "water_infrastructure"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Target:
    root = tmp_path_factory.mktemp("dashboard-demo")
    target = Target("duckdb", duckdb_path=root / "warehouse.duckdb")
    env = {
        **os.environ,
        **target.dbt_env(),
        "WATER_REDIS_EMBEDDED_PATH": str(root / "redis" / "water.rdb"),
        "WATER_DBT_NODE_TASKS": "0",
    }
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", "--nodes", "8", "--days", "30"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


@pytest.fixture
def on_target(demo, monkeypatch):
    """AppTest runs the page in this process: point the environment at the demo warehouse."""
    for key, value in demo.dbt_env().items():
        monkeypatch.setenv(key, value)
    import streamlit as st

    st.cache_data.clear()
    return demo


def _sql(target: Target, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(target.duckdb_path), read_only=True) as con:
        con.execute("set TimeZone = 'UTC'")
        return con.execute(sql, params or []).fetchall()


def _page(name: str, query: dict[str, str] | None = None) -> AppTest:
    app = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
    for key, value in (query or {}).items():
        app.query_params[key] = value
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, [e.value for e in app.error]
    return app


def _metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def _charts(app: AppTest) -> list[list[int]]:
    """Per Vega-Lite chart on the page: the row count of each dataset Streamlit sent with it."""
    import pyarrow as pa

    return [
        [pa.ipc.open_stream(d.data.data).read_all().num_rows for d in chart.proto.datasets]
        for chart in app.get("vega_lite_chart")
    ]


# -- AppTest: each page against the warehouse -------------------------------------------------
def test_overview_counts_nodes_by_status_and_open_anomalies(on_target):
    app = _page("overview")
    (total,) = _sql(on_target, f"select count(*) from {S}.nodes")[0]
    metrics = _metrics(app)
    assert metrics["nodes"] == str(total)
    statuses = sum(int(metrics[s]) for s in ("ok", "stale", "anomaly", "no_data"))
    assert statuses == total
    (located,) = _sql(on_target, f"select count(*) from {S}.nodes where latitude is not null")[0]
    assert located > 0 and len(_charts(app)) == 2  # map and status by district
    (end,) = _sql(
        on_target, f"select max(window_end) from {S}.computed_metrics where time_window = '5min'"
    )[0]
    (open_24h,) = _sql(
        on_target,
        f"select count(*) from {S}.anomalies where window_start >= ? and severity in ('critical', 'warning')",
        [end - timedelta(hours=24)],
    )[0]
    assert any(f"last 24 h ({open_24h})" in h.value for h in app.subheader)
    (open_events,) = _sql(
        on_target,
        f"select count(*) from {S}.anomaly_events where status = 'open'"
        " and severity in ('critical', 'warning')",
    )[0]
    assert any(h.value == f"Open events ({open_events})" for h in app.subheader)


def test_node_page_plots_the_chosen_nodes_windows_and_forecast(on_target):
    node_id = _sql(
        on_target, f"select min(node_id) from {S}.nodes where node_type <> 'pressure_logger'"
    )[0][0]
    app = _page("node", {"node_id": node_id})
    assert app.selectbox[0].value == node_id
    (end,) = _sql(
        on_target, f"select max(window_end) from {S}.computed_metrics where time_window = '5min'"
    )[0]
    (hours,) = _sql(
        on_target,
        f"select count(*) from {S}.computed_metrics where node_id = ? and time_window = '1hour'"
        " and window_start >= ? and window_start < ? and avg_flow_rate is not null",
        [node_id, end - timedelta(days=2), end],
    )[0]
    specs = _charts(app)
    assert specs[0][0] == hours > 0  # the flow chart's windows
    (forecast,) = _sql(
        on_target, f"select count(*) from {S}.ml_predictions_cache where node_id = ?", [node_id]
    )[0]
    assert forecast > 0
    assert len(specs) == 3, "flow, pressure and forecast charts"


def test_district_page_shows_the_last_complete_days_balance(on_target):
    district, nrw, day = _sql(
        on_target,
        f"select district, water_loss_percent, local_date from {S}.network_efficiency"
        " where time_window = '1day' and is_complete and district <> '(network)'"
        " order by window_start desc, district limit 1",
    )[0]
    app = _page("district", {"district": district})
    metrics = _metrics(app)
    assert metrics["last complete day"] == str(day)
    assert metrics["NRW %"] == f"{nrw:.1f}"
    assert len(_charts(app)) == 2


def test_anomalies_page_filters_and_shows_evidence(on_target):
    app = _page("anomalies")
    app.selectbox[0].select(720).run()
    app.multiselect[0].set_value([]).run()  # every severity
    (end,) = _sql(
        on_target, f"select max(window_end) from {S}.computed_metrics where time_window = '5min'"
    )[0]
    (count,) = _sql(
        on_target,
        f"select count(*) from {S}.anomalies where window_start >= ?",
        [end - timedelta(hours=720)],
    )[0]
    assert count > 0
    assert any(f" of {min(count, 500)} anomalies" in c.value for c in app.caption)
    opened, seen = _sql(
        on_target,
        f"select count(*) filter (where status = 'open'), count(*) from {S}.anomaly_events"
        " where severity in ('critical', 'warning') and (status = 'open' or last_seen_at >= ?)",
        [end - timedelta(hours=720)],
    )[0]
    assert seen > 0, "the demo's injected incidents are events"
    assert any(
        h.value == f"Events ({opened} open, {seen} in the last 720 h)" for h in app.subheader
    )
    assert app.json, "the evidence of the selected anomaly"
    severity = sorted(_sql(on_target, f"select distinct severity from {S}.anomalies"))[0][0]
    app.multiselect[0].set_value([severity]).run()
    (only,) = _sql(
        on_target,
        f"select count(*) from {S}.anomalies where window_start >= ? and severity = ?",
        [end - timedelta(hours=720), severity],
    )[0]
    assert any(c.value.startswith(f"{min(only, 500)} of ") for c in app.caption)


def test_quality_page_states_the_platforms_verdict(on_target, tmp_path, monkeypatch):
    app = _page("quality")
    run_id, critical, warning = _sql(
        on_target,
        f"select run_id, count(*) filter (where status = 'failed' and severity = 'critical'),"
        f" count(*) filter (where status = 'failed' and severity = 'warning')"
        f" from {S}.quality_checks group by run_id order by max(checked_at) desc limit 1",
    )[0]
    assert critical == 0
    expected = f"passed with {warning} warning(s)" if warning else "passed"
    banner = (app.warning if warning else app.success)[0].value
    assert run_id in banner and f"**{expected}**" in banner
    assert len(_charts(app)) == 1  # per node and day

    # The same page on a copy of the warehouse with a later run that failed one critical check.
    copy = Target("duckdb", duckdb_path=tmp_path / "copy.duckdb")
    shutil.copy(on_target.duckdb_path, copy.duckdb_path)
    with duckdb.connect(str(copy.duckdb_path)) as con:
        con.execute(
            f"insert into {S}.quality_checks (run_id, stage, suite, expectation, severity, status,"
            " success, checked_at) values ('injected', 'marts', 'computed_metrics', 'x', 'critical',"
            " 'failed', false, ?), ('injected', 'marts', 'computed_metrics', 'y', 'warning',"
            " 'failed', false, ?)",
            [datetime.now(UTC), datetime.now(UTC)],
        )
    monkeypatch.setenv("WATER_DUCKDB_PATH", str(copy.duckdb_path))
    import streamlit as st

    st.cache_data.clear()
    app = AppTest.from_file(str(VIEWS / "quality.py"), default_timeout=60)
    app.run()
    assert not app.exception
    assert "injected" in app.error[0].value and "**failed**" in app.error[0].value


def test_pipeline_page_lists_jobs_and_models(on_target):
    app = _page("pipeline")
    (jobs,) = _sql(on_target, f"select count(*) from {S}.processing_jobs")[0]
    (models,) = _sql(on_target, f"select count(*) from {S}.ml_models")[0]
    frames = [d.value for d in app.dataframe]
    assert len(frames[0]) == min(jobs, 50)
    assert len(frames[-1]) == models > 0
    charts = _charts(app)
    assert len(charts) == 2  # job durations and skill per horizon
    # One bar per horizon that has met its actual in the last 7 days, and its MASE is the
    # model's MAE over the seasonal-naive MAE on those same rows (computed here in SQL).
    (end,) = _sql(
        on_target,
        f"select max(window_end) from {S}.computed_metrics where time_window = '5min'",
    )[0]
    skill = _sql(
        on_target,
        "select horizon_hours, avg(abs(flow_rate_predicted - flow_rate_actual))"
        " / avg(abs(flow_rate_seasonal_naive - flow_rate_actual)) from ml.ml_forecast_outcomes"
        " where target_timestamp >= ? and flow_rate_actual is not null"
        " and flow_rate_predicted is not null and flow_rate_seasonal_naive is not null"
        " group by horizon_hours order by horizon_hours",
        [end - timedelta(days=7)],
    )
    assert charts[1][0] == len(skill) > 0
    shown = app.get("vega_lite_chart")[1].proto.datasets[0].data.data
    import pyarrow as pa

    bars = pa.ipc.open_stream(shown).read_all().to_pandas().set_index("horizon_hours")["mase"]
    for horizon, mase in skill:
        assert bars[horizon] == pytest.approx(mase, rel=1e-9)


def test_whole_app_navigates_and_missing_warehouse_is_one_line(on_target, tmp_path, monkeypatch):
    app = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=60)
    app.run()
    assert not app.exception and app.title[0].value == "Network overview"
    app.switch_page(str(VIEWS / "pipeline.py")).run()
    assert not app.exception and app.title[0].value == "Pipeline health"

    monkeypatch.setenv("WATER_DUCKDB_PATH", str(tmp_path / "none.duckdb"))
    import streamlit as st

    st.cache_data.clear()
    app = AppTest.from_file(str(VIEWS / "overview.py"), default_timeout=60)
    app.run()
    assert not app.exception
    assert app.error[0].value.startswith("cannot read the warehouse:")
    assert "does not exist yet" in app.error[0].value and "\n" not in app.error[0].value
    assert not (tmp_path / "none.duckdb").exists(), "the dashboard never creates a warehouse"


# -- headless Chromium: a running dashboard and the API's offline docs -----------------------
# Charts each page draws on the demo (the AppTest checks above count the same).
EXPECTED_CHARTS = {
    "overview": 2,
    "node": 3,
    "district": 2,
    "anomalies": 1,
    "quality": 1,
    "pipeline": 2,
}
CHART_PAINT = """
return [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')].map((chart) => {
  const canvas = chart.querySelector('canvas');
  if (canvas && canvas.width > 0 && canvas.height > 0) {
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
    return painted;
  }
  // SVG: count the data marks (vega's role-mark groups), not axes or legends.
  return chart.querySelectorAll('svg g.role-mark > *').length;
});
"""
# An exception, st.error, or a dialog (Streamlit's "Page not found" is one).
ERROR_ELEMENTS = (
    '[data-testid="stException"], [data-testid="stAlertContentError"], [data-testid="stDialog"]'
)
# URL path per page (the default page is served at the root).
URLS = {page: "" if page == "overview" else page for page in PAGES}


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through its chromedriver; every host but 127.0.0.1 is unresolvable,
    so a page that needs a CDN shows it."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1600",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _serve(args: list[str], env: dict[str, str], probe: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args, "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}{probe}", proc)
    except BaseException:
        proc.kill()
        raise
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_every_page_renders_its_charts_in_chromium(demo, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = {**os.environ, **demo.dbt_env()}
    # The screenshots show a real district (not the whole network) and a forecast node with
    # anomalies.
    (district,) = _sql(
        demo, f"select min(district) from {S}.network_efficiency where district <> '(network)'"
    )[0]
    (node_id,) = _sql(
        demo,
        f"select node_id from {S}.anomalies where node_id in"
        f" (select node_id from {S}.ml_predictions_cache)"
        " group by node_id order by count(*) desc, node_id limit 1",
    )[0]
    urls = {**URLS, "district": f"district?district={district}", "node": f"node?node_id={node_id}"}
    run_id, critical, warning = _sql(
        demo,
        "select run_id, count(*) filter (where status = 'failed' and severity = 'critical'),"
        " count(*) filter (where status = 'failed' and severity = 'warning')"
        f" from {S}.quality_checks group by run_id order by max(checked_at) desc limit 1",
    )[0]
    expected_verdict = (
        "failed" if critical else f"passed with {warning} warning(s)" if warning else "passed"
    )
    proc, base = _serve(["dashboard"], env, "/_stcore/health")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        for page in PAGES:
            browser.get(f"{base}/{urls[page]}")
            expected = EXPECTED_CHARTS[page]

            def drawn(driver, expected=expected):
                painted = driver.execute_script(CHART_PAINT)
                return painted if len(painted) == expected and all(painted) else False

            try:
                painted = WebDriverWait(browser, 90, poll_frequency=0.5).until(drawn)
            except Exception as exc:
                browser.save_screenshot(str(SCREENSHOTS / f"FAILED-{page}.png"))
                raise AssertionError(
                    f"{page}: charts not drawn: {browser.execute_script(CHART_PAINT)}"
                ) from exc
            time.sleep(1)  # let the last chart finish its transition before the screenshot
            assert not browser.find_elements(By.CSS_SELECTOR, ERROR_ELEMENTS), page
            assert all(p > 0 for p in painted)
            if page == "quality":  # the platform's verdict is on screen (warning != failed)
                banner = browser.find_element(
                    By.XPATH, "//*[contains(text(), 'Latest gate run')]/.."
                )
                assert banner.is_displayed() and f"{run_id}" in banner.text
                assert expected_verdict in banner.text, banner.text
            browser.save_screenshot(str(SCREENSHOTS / f"{page}.png"))
    finally:
        _stop(proc)


def test_api_docs_render_offline_in_chromium(demo, browser):
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = {**os.environ, **demo.dbt_env(), "REDIS_URL": "redis://127.0.0.1:1/0"}
    proc, base = _serve(["api", "--insecure-no-auth"], env, "/health")
    try:
        with urllib.request.urlopen(f"{base}/openapi.json") as response:
            spec = json.load(response)
        operations = sum(len(methods) for methods in spec["paths"].values())
        assert operations >= 10

        browser.get(f"{base}/docs")
        blocks = WebDriverWait(browser, 60).until(
            lambda d: (
                (found := d.find_elements(By.CSS_SELECTOR, ".opblock-summary"))
                and len(found) == operations
                and found
            )
        )
        assert all(b.is_displayed() for b in blocks)
        shown = {
            b.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text.replace("\u200b", "")
            for b in blocks
        }
        assert shown == set(spec["paths"])

        browser.get(f"{base}/redoc")
        menu = WebDriverWait(browser, 60).until(
            lambda d: (
                (found := d.find_elements(By.CSS_SELECTOR, "li[data-item-id*='operation/']"))
                and len(found) == operations
                and found
            )
        )
        assert all(item.get_attribute("data-item-id") for item in menu)
        sections = browser.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']")
        assert len(sections) == operations
        assert any(s.is_displayed() for s in sections)
    finally:
        _stop(proc)


def test_water_dashboard_refuses_a_missing_warehouse_in_one_line(tmp_path):
    env = {**os.environ, "WATER_TARGET": "duckdb", "WATER_DUCKDB_PATH": str(tmp_path / "no.duckdb")}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "dashboard", "--port", str(free_port())],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert (
        done.stderr.startswith("water: error: duckdb file ") and "does not exist yet" in done.stderr
    )
    assert done.stderr.count("\n") == 1 and not (tmp_path / "no.duckdb").exists()


@pytest.mark.postgres
def test_every_page_reads_the_postgresql_serving_tier(pg_target, monkeypatch):
    """The same pages on PostgreSQL (a small network, one cycle, no models yet): each renders
    without an error and the overview counts the nodes the warehouse has."""
    env = {**os.environ, **pg_target.dbt_env(), "REDIS_URL": "redis://127.0.0.1:1/0"}
    for args in (
        ("load", "synthetic", "--nodes", "4", "--days", "2", "--cadence", "300", "--seed", "3"),
        ("cycle", "--no-publish"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", *args],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    for key, value in pg_target.dbt_env().items():
        monkeypatch.setenv(key, value)
    import streamlit as st

    st.cache_data.clear()
    for page in PAGES:
        app = _page(page)
        if page == "overview":
            assert _metrics(app)["nodes"] == "4"
        if page == "district":
            assert len(_charts(app)) == 2
