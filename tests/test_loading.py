"""Loading raw files: whole file or nothing, one-line errors, idempotent re-loads, bulk paths."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from flows.kernel.raw_store import ensure_raw_tables
from flows.kernel.warehouse import connect
from flows.loaders.files import DateRange, LoadError, PartialLoad, load_files
from flows.loaders.nodes import NodeFileError, register_node_file
from flows.pipeline.cycle import run_cycle

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def _frame(rows: int = 10, node: str = "N1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": [T0 + timedelta(minutes=i) for i in range(rows)],
            "node_id": node,
            "node_name": f"{node} meter",
            "flow_rate": [1.5 + i for i in range(rows)],
            "pressure": 4.2,
            "temperature": 11.0,
            "volume": [100.0 + i for i in range(rows)],
            "quality_score": 0.98,
        }
    )


def _raw_count(target) -> int:
    with connect(target) as wh:
        ensure_raw_tables(wh)
        return wh.scalar("select count(*) from raw.sensor_readings")


def test_parquet_and_csv_load_with_batch_ids_and_are_idempotent(target, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    _frame(10).to_parquet(landing / "a.parquet", index=False)
    _frame(5, "N2").to_csv(landing / "b.csv", index=False)
    with connect(target) as wh:
        first = load_files(wh, [str(landing / "*")], progress=False)
        again = load_files(wh, [str(landing / "a.parquet"), str(landing / "b.csv")], progress=False)
        rows = wh.query(
            "select batch_id, count(*), min(batch_row), max(batch_row), count(distinct loaded_at)"
            " from raw.sensor_readings group by batch_id order by 2 desc"
        )
    assert [r.rows for r in first] == [10, 5]
    assert all(r.skipped for r in again) and sum(r.rows for r in again) == 0
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [(10, 1, 10, 1), (5, 1, 5, 1)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "the file is empty"),
        ("header.csv", "timestamp,node_id,flow_rate\n", "header but no rows"),
        (
            "nokey.csv",
            "timestamp,flow_rate\n2024-05-01T00:00:00Z,1\n",
            "missing required column(s) node_id",
        ),
        (
            "nomeasure.csv",
            "timestamp,node_id\n2024-05-01T00:00:00Z,N1\n",
            "none of the measurement columns",
        ),
        (
            "badts.csv",
            "timestamp,node_id,flow_rate\n2024-05-01T00:00:00Z,N1,1\nyesterday,N1,2\n",
            "row 2, column timestamp: cannot read 'yesterday' as a timestamp",
        ),
        (
            "badnum.csv",
            "timestamp,node_id,flow_rate,pressure\n2024-05-01T00:00:00Z,N1,1,4\n2024-05-01T00:01:00Z,N1,1,four\n",
            "row 2, column pressure: cannot read 'four' as a number",
        ),
        (
            "ragged.csv",
            "timestamp,node_id,flow_rate\n2024-05-01T00:00:00Z,N1,1,9,9\n",
            "not a readable CSV file",
        ),
        (
            "twice.csv",
            "timestamp,node_id,flow_rate,Flow_Rate\n2024-05-01T00:00:00Z,N1,1,2\n",
            "appears twice",
        ),
    ],
)
def test_bad_csv_files_are_refused_whole_with_one_line(target, tmp_path, name, content, message):
    _frame(3).to_parquet(tmp_path / "good.parquet", index=False)
    (tmp_path / name).write_text(content)
    with connect(target) as wh:
        load_files(wh, [str(tmp_path / "good.parquet")], progress=False)
        with pytest.raises(LoadError) as caught:
            load_files(wh, [str(tmp_path / name)], progress=False)
    text = str(caught.value)
    assert message in text and name in text and "\n" not in text
    assert _raw_count(target) == 3  # unchanged by the refused file


def test_truncated_and_mistyped_parquet_are_refused(target, tmp_path):
    _frame(50).to_parquet(tmp_path / "full.parquet", index=False)
    data = (tmp_path / "full.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    _frame(3).assign(flow_rate=[True, False, True]).to_parquet(
        tmp_path / "bool.parquet", index=False
    )
    _frame(3).assign(timestamp=[1, 2, 3]).to_parquet(tmp_path / "intts.parquet", index=False)
    with connect(target) as wh:
        for name, message in [
            ("cut.parquet", "not a readable Parquet file"),
            ("bool.parquet", "column flow_rate has type BOOLEAN; expected a number"),
            ("intts.parquet", "column timestamp has type BIGINT"),
        ]:
            with pytest.raises(LoadError, match=message):
                load_files(wh, [str(tmp_path / name)], progress=False)
    assert _raw_count(target) == 0


def test_loader_edges_found_by_the_fault_campaign(target, tmp_path):
    """List-typed columns name file and column; DATE timestamps are refused; an empty folder is
    an error; .pq files in folders load."""
    listed = _frame(3).assign(node_id=[["a"], ["b"], ["c"]])
    listed.to_parquet(tmp_path / "listed.parquet", index=False)
    _frame(3).assign(flow_rate=[[1.0], [2.0], [3.0]]).to_parquet(
        tmp_path / "listflow.parquet", index=False
    )
    _frame(3).assign(timestamp=[T0.date()] * 3).to_parquet(tmp_path / "dates.parquet", index=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "pq").mkdir()
    _frame(4).to_parquet(tmp_path / "pq" / "part.pq", index=False)
    with connect(target) as wh:
        for name, message in [
            ("listed.parquet", r"listed\.parquet: column node_id has type VARCHAR\[\]"),
            ("listflow.parquet", r"listflow\.parquet: column flow_rate has type DOUBLE\[\]"),
            ("dates.parquet", r"dates\.parquet: column timestamp has type DATE; .*time of day"),
            ("empty", r"empty: no \.parquet, \.pq or \.csv file in this folder"),
        ]:
            with pytest.raises(LoadError, match=message):
                load_files(wh, [str(tmp_path / name)], progress=False)
        assert _raw_count(target) == 0
        loaded = load_files(wh, [str(tmp_path / "pq")], progress=False)
    assert [r.rows for r in loaded] == [4]
    assert _raw_count(target) == 4


def test_one_unreadable_file_in_a_folder_does_not_stop_the_others(target, tmp_path):
    """Found by the fault campaign: one bad file halted every node's processing."""
    folder = tmp_path / "drop"
    folder.mkdir()
    _frame(5, node="N1").to_parquet(folder / "a.parquet", index=False)
    data = (folder / "a.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(data[: len(data) // 2])  # truncated: unreadable
    _frame(7, node="N2").to_parquet(folder / "c.parquet", index=False)
    with connect(target) as wh, pytest.raises(PartialLoad) as refused:
        load_files(wh, [str(folder)], progress=False)
    assert [f for f, _ in refused.value.refused] == [str(folder / "b.parquet")]
    assert "b.parquet" in str(refused.value) and "\n" not in str(refused.value)
    assert sorted(r.rows for r in refused.value.results) == [5, 7]
    assert _raw_count(target) == 12  # the good files, nothing of the bad one


def test_a_cycle_processes_the_good_files_and_records_the_refused_one(duckdb_target, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    _frame(5, node="N1").to_parquet(folder / "a.parquet", index=False)
    (folder / "b.csv").write_text("timestamp,node_id,flow_rate\nnot-a-time,N9,1\n")
    result = run_cycle(duckdb_target, source=str(folder), publish_to_redis=False)
    assert result.status == "completed"
    load = result.summary["steps"]["load"]
    assert load["rows_loaded"] == 5
    assert [r["file"] for r in load["refused_files"]] == [str(folder / "b.csv")]
    assert "row 1, column timestamp" in load["refused_files"][0]["reason"]
    with connect(duckdb_target) as wh:
        nodes = wh.query("select distinct node_id from water_infrastructure.computed_metrics")
    assert [n[0] for n in nodes] == ["N1"]
    env = {**os.environ, "WATER_DUCKDB_PATH": str(duckdb_target.duckdb_path)}
    cli = _water("load", str(folder), env=env)
    assert cli.returncode == 1 and "b.csv" in cli.stderr and "1 of 2 file(s) refused" in cli.stderr
    cli = _water("cycle", "--source", str(folder), "--no-publish", env=env)
    assert cli.returncode == 1 and "1 source file(s) refused, the rest processed" in cli.stderr


def test_infinite_timestamps_are_quarantined_and_cycles_go_on(target, tmp_path):
    """Found by the fault campaign: an `infinity` timestamp loaded, then failed the raw gate of
    every later cycle; the watermark never advanced."""
    csv = tmp_path / "inf.csv"
    csv.write_text(
        "timestamp,node_id,flow_rate\n"
        "infinity,N1,1.0\n"
        "-infinity,N1,1.0\n" + "".join(f"2024-05-01T01:{i:02d}:00Z,N2,1.0\n" for i in range(40))
    )
    with connect(target) as wh:
        load_files(wh, [str(csv)], progress=False)
    result = run_cycle(target, publish_to_redis=False)
    assert result.status == "completed" and result.watermark is not None
    with connect(target) as wh:
        rejected = dict(
            wh.query(
                "select batch_row, rejection_reasons from water_infrastructure.rejected_readings"
            )
        )
    assert rejected == {1: "timestamp_missing", 2: "timestamp_missing"}


def test_an_implausible_totaliser_is_quarantined_not_published(target, tmp_path):
    """Found by the fault campaign: a totaliser of 1e300 was valid and published as m³ delivered."""
    csv = tmp_path / "totaliser.csv"
    rows = [f"2024-05-01T01:{i:02d}:00Z,N1,1.0,{100 + i}\n" for i in range(40)]
    rows[20] = "2024-05-01T01:20:00Z,N1,1.0,1e300\n"
    csv.write_text("timestamp,node_id,flow_rate,volume\n" + "".join(rows))
    with connect(target) as wh:
        load_files(wh, [str(csv)], progress=False)
    run_cycle(target, publish_to_redis=False)
    with connect(target) as wh:
        rejected = wh.query(
            "select batch_row, rejection_reasons from water_infrastructure.rejected_readings"
        )
        delivered = wh.scalar(
            "select sum(total_volume) from water_infrastructure.computed_metrics"
            " where node_id = 'N1' and time_window = '5min'"
        )
    assert rejected == [(21, "volume_out_of_range")]
    # The other 39 readings climb 1 m³ a minute from 100 to 139: 39 m³ delivered.
    assert delivered == pytest.approx(39.0)


@pytest.mark.parametrize(
    "node_id",
    ["a/b", "N 1", "N\t1", "x" * 129, "N\x001", "N\x1b[31m1", "N\u00a01"],
)
def test_node_ids_the_api_cannot_address_are_refused_at_load(duckdb_target, tmp_path, node_id):
    """Found by the fault campaign: ids with '/', whitespace, > 128 characters or control
    characters loaded, yet the API cannot address them and they reached `water status`."""
    frame = _frame(3, node="N1")
    frame.loc[1, "node_id"] = node_id
    frame.to_parquet(tmp_path / "ids.parquet", index=False)
    with connect(duckdb_target) as wh, pytest.raises(LoadError, match="row 2, column node_id"):
        load_files(wh, [str(tmp_path / "ids.parquet")], progress=False)
    assert _raw_count(duckdb_target) == 0


def test_blank_ids_are_missing_and_nfd_ids_are_one_node(duckdb_target, tmp_path):
    frame = _frame(4, node="Caf\u00e9")  # NFC
    frame.loc[1, "node_id"] = "Cafe\u0301"  # the same id in NFD
    frame.loc[2, "node_id"] = "\t"  # tab only: no id
    frame.to_parquet(tmp_path / "ids.parquet", index=False)
    with connect(duckdb_target) as wh:
        load_files(wh, [str(tmp_path / "ids.parquet")], progress=False)
        ids = wh.query("select node_id, count(*) from raw.sensor_readings group by 1 order by 1")
    assert ids == [("Caf\u00e9", 3), (None, 1)]


@pytest.mark.parametrize("node_id", ["a/b", "N 1", "x" * 129, "N\x1b[31m1", "N\u00a01"])
def test_water_nodes_refuses_ids_the_api_cannot_address(duckdb_target, tmp_path, node_id):
    """Found by the fault campaign: `water nodes` took ids that readings cannot have (the
    loader refuses them), so metadata described nodes no reading or API path could reach."""
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(f"node_id,district\nN1,DMA-1\n{node_id},DMA-1\n", encoding="utf-8")
    with connect(duckdb_target) as wh:
        with pytest.raises(NodeFileError, match="row 3, column node_id: .* is not a node id"):
            register_node_file(wh, nodes)
        assert not wh.relation_exists("raw", "node_metadata") or not wh.query(
            "select * from raw.node_metadata"
        )


def test_water_nodes_stores_ids_nfc_like_readings(duckdb_target, tmp_path):
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("node_id,district\nCafe\u0301,DMA-1\n", encoding="utf-8")
    with connect(duckdb_target) as wh:
        register_node_file(wh, nodes)
        assert wh.query("select node_id from raw.node_metadata") == [("Caf\u00e9",)]


def test_water_status_prints_no_control_characters():
    from flows.pipeline.status import printable

    assert printable("N\x1b[31m1\x00\nnext") == "N\\x1b[31m1\\x00\nnext"


def test_dirty_values_are_loaded_then_quarantined_with_reasons(target, tmp_path):
    csv = tmp_path / "dirty.csv"
    csv.write_text(
        "timestamp,node_id,node_name,flow_rate,pressure,temperature,volume,quality_score,firmware\n"
        "2024-05-01T00:00:00Z,N1,n,1.0,4,10,5,0.9,v1\n"
        "2024-05-01T00:01:00Z,N1,n,NaN,4,10,5,0.9,v1\n"  # NaN = missing: still valid
        "2024-05-01T00:02:00Z,N1,n,inf,4,10,5,0.9,v1\n"
        "2024-05-01T00:03:00Z,  ,n,1,4,10,5,0.9,v1\n"
        "2024-05-01T00:04:00Z,N1,n,,,,,0.9,v1\n"
        "1999-12-31T23:59:00Z,N1,n,1,4,10,5,0.9,v1\n"
        "2024-05-01T00:06:00Z,N1,n,1,26,10,5,1.5,v1\n"
        "2024-05-01T00:00:00Z,N1,n,3.0,4,10,5,0.95,v1\n"  # repeat with higher quality: wins
        "2024-04-30T23:00:00+02:00,N1,n,2.0,4,10,5,0.9,v1\n"  # out of order, with an offset
        # 40 clean readings of another node keep the batch under the raw gate's 20 % reject limit
        + "".join(f"2024-05-01T01:{i:02d}:00Z,N2,m,1.0,4,10,{i},0.9,v1\n" for i in range(40))
    )
    with connect(target) as wh:
        load_files(wh, [str(csv)], progress=False)
    run_cycle(target)
    with connect(target) as wh:
        rejected = dict(
            wh.query(
                "select batch_row, rejection_reasons from water_infrastructure.rejected_readings"
            )
        )
        kept = wh.query_df(
            "select reading_at, flow_rate, quality_score from water_staging.int_readings_deduplicated"
            " where node_id = 'N1' order by reading_at"
        )
    assert rejected == {
        3: "flow_rate_out_of_range",
        4: "node_id_missing",
        5: "no_measurement",
        6: "timestamp_too_old",
        7: "pressure_out_of_range,quality_score_out_of_range",
    }
    assert len(kept) == 3  # rows 1/8 (one key), 2, 9
    first = kept[kept["reading_at"] == pd.Timestamp("2024-05-01T00:00:00Z")]
    assert first["flow_rate"].item() == 3.0 and first["quality_score"].item() == 0.95
    assert kept["flow_rate"].isna().sum() == 1  # the NaN reading kept as missing flow


def test_date_range_filters_rows_and_is_part_of_the_batch_identity(duckdb_target, tmp_path):
    _frame(60 * 48).to_parquet(tmp_path / "two_days.parquet", index=False)
    with connect(duckdb_target) as wh:
        day1 = load_files(
            wh,
            [str(tmp_path / "two_days.parquet")],
            DateRange(date(2024, 5, 1), date(2024, 5, 1)),
            progress=False,
        )
        day2 = load_files(
            wh,
            [str(tmp_path / "two_days.parquet")],
            DateRange(date(2024, 5, 2), None),
            progress=False,
        )
        none = load_files(
            wh,
            [str(tmp_path / "two_days.parquet")],
            DateRange(date(2025, 1, 1), None),
            progress=False,
        )
    assert (day1[0].rows, day2[0].rows, none[0].rows, none[0].skipped) == (1440, 1440, 0, True)


def test_node_file_upserts_only_given_columns_and_refuses_bad_rows(target, tmp_path):
    full = tmp_path / "nodes.csv"
    full.write_text(
        "node_id,district,balance_role,expected_cadence_s,pressure_min_bar\nN1,DMA-1,inlet,60,2.5\n"
        "N2,DMA-1,consumption,300,\n"
    )
    move = tmp_path / "move.csv"
    move.write_text("node_id,district\nN2,DMA-2\nN3,DMA-2\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("node_id,balance_role\nN4,reservoir\n")
    with connect(target) as wh:
        assert register_node_file(wh, full).inserted == 2
        result = register_node_file(wh, move)
        with pytest.raises(
            NodeFileError, match=r"row 2, column balance_role: 'reservoir' is not one of"
        ):
            register_node_file(wh, bad)
        rows = wh.query(
            "select node_id, district, balance_role, expected_cadence_s from raw.node_metadata order by 1"
        )
    assert (result.inserted, result.updated) == (1, 1)
    assert rows == [
        ("N1", "DMA-1", "inlet", 60),
        ("N2", "DMA-2", "consumption", 300),
        ("N3", "DMA-2", None, None),
    ]


def _water(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    water = os.path.join(os.path.dirname(sys.executable), "water")
    return subprocess.run([water, *args], env=env, capture_output=True, text=True, timeout=600)


def test_cli_load_refuses_a_bad_file_with_one_line_and_exit_code(tmp_path):
    env = {**os.environ, "WATER_DUCKDB_PATH": str(tmp_path / "w.duckdb")}
    (tmp_path / "bad.csv").write_text("timestamp,node_id,flow_rate\nnot-a-time,N1,1\n")
    result = _water("load", str(tmp_path / "bad.csv"), env=env)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "row 1, column timestamp" in result.stderr
    unknown = _water("status", "--target", "oracle", env=env)
    assert unknown.returncode == 1 and "unknown target 'oracle'" in unknown.stderr


def test_demo_command_builds_everything_on_duckdb(tmp_path):
    env = {**os.environ, "WATER_DUCKDB_PATH": str(tmp_path / "demo.duckdb")}
    env.pop("REDIS_URL", None)
    result = _water("demo", "--nodes", "5", "--days", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "computed_metrics  5min" in result.stdout and "1day" in result.stdout
    status = _water("status", env=env)
    assert status.returncode == 0 and "rejected" in status.stdout


def test_cli_load_synthetic_realistic_with_truth(tmp_path):
    import duckdb

    env = {**os.environ, "WATER_DUCKDB_PATH": str(tmp_path / "w.duckdb")}
    args = ["load", "synthetic", "--profile", "realistic", "--nodes", "12", "--days", "2"]
    result = _water(*args, "--cadence", "300", "--truth", str(tmp_path / "truth"), env=env)
    assert result.returncode == 0, result.stderr
    incidents = pd.read_csv(tmp_path / "truth" / "incidents.csv")
    assert set(incidents.kind) == {"leak", "burst"}
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        types = dict(con.sql("select node_id, node_type from raw.node_metadata").fetchall())
        cadences = {
            r[0] for r in con.sql("select expected_cadence_s from raw.node_metadata").fetchall()
        }
        pumps = con.sql(
            "select count(*) from raw.sensor_readings where node_id in "
            "(select node_id from raw.node_metadata where node_type = 'pump')"
        ).fetchall()[0][0]
    assert {"pump", "tank", "bulk_meter", "pressure_logger"} <= set(types.values())
    assert {300, 900} <= cadences and pumps > 0
    assert set(incidents.district) <= {f"DMA-{i:02d}" for i in range(1, 3)}
    bad = _water(*args, "--cadence", "90", env=env)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert "multiple of 60" in bad.stderr
