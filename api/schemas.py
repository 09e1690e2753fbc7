"""Response models: the OpenAPI schema at /docs and the contract tests both read these.

Row models allow extra fields: the published tables may carry more columns than the API
names, and those pass through unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Source = Literal["cache", "database"]
TimeWindow = Literal["5min", "1hour", "1day"]


class Row(BaseModel):
    model_config = ConfigDict(extra="allow")


class FromSnapshot(BaseModel):
    source: Source = Field(description="`cache` (Redis snapshot) or `database` (fallback).")
    cycle_id: str | None = Field(
        None, description="Cycle that published the snapshot (cache only)."
    )
    published_at: datetime | None = Field(None, description="When that snapshot was published.")


class MetricsRow(Row):
    node_id: str
    time_window: TimeWindow
    window_start: datetime
    window_end: datetime
    reading_count: int
    avg_flow_rate: float | None = None
    min_flow_rate: float | None = None
    max_flow_rate: float | None = None
    avg_pressure: float | None = None
    min_pressure: float | None = None
    max_pressure: float | None = None
    avg_temperature: float | None = None
    total_volume: float | None = None
    anomaly_count: int
    quality_score: float
    computed_at: datetime


class SeriesRow(Row):
    """One window of a node's history: what a dashboard plots (the full row: /metrics)."""

    window_start: datetime
    window_end: datetime
    reading_count: int
    avg_flow_rate: float | None = None
    min_flow_rate: float | None = None
    max_flow_rate: float | None = None
    avg_pressure: float | None = None
    min_pressure: float | None = None
    max_pressure: float | None = None
    avg_temperature: float | None = None
    total_volume: float | None = None
    anomaly_count: int
    quality_score: float


class NodeSummary(Row):
    node_id: str
    node_name: str | None = None
    district: str
    balance_role: str
    status: Literal["ok", "stale", "anomaly", "no_data"]
    last_reading_at: datetime | None = None


class NodesResponse(FromSnapshot):
    count: int
    nodes: list[NodeSummary]


class NodeMetricsResponse(FromSnapshot):
    node_id: str
    time_window: TimeWindow
    metrics: MetricsRow | None = Field(
        description="Latest window; null when the node has none yet."
    )


class NodeHistoryResponse(FromSnapshot):
    node_id: str
    time_window: TimeWindow
    start: datetime
    end: datetime
    count: int
    rows: list[SeriesRow]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last."
    )


class Prediction(Row):
    target_timestamp: datetime
    flow_rate_predicted: float | None = None
    flow_rate_lower: float | None = None
    flow_rate_upper: float | None = None
    model_id: str | None = None


class PredictionsResponse(FromSnapshot):
    node_id: str
    model_available: bool = Field(description="False when no active model has forecast this node.")
    count: int
    predictions: list[Prediction]


class Anomaly(Row):
    anomaly_id: str
    node_id: str
    window_start: datetime
    severity: str
    anomaly_type: str | None = None


class AnomaliesResponse(FromSnapshot):
    hours: int
    available: bool = Field(description="False while the anomalies table has not been built.")
    count: int
    anomalies: list[Anomaly]
    next_cursor: str | None


class EfficiencyPair(BaseModel):
    """Latest is the latest COMPLETE period; the open one is apart, marked partial."""

    hourly: dict[str, Any] | None = Field(
        description="Latest complete hour (period_status complete)."
    )
    daily: dict[str, Any] | None = Field(description="Latest complete local day.")
    hourly_partial: dict[str, Any] | None = Field(
        default=None, description="The open hour so far (period_status partial), if any."
    )
    daily_partial: dict[str, Any] | None = Field(
        default=None, description="The open local day so far (period_status partial), if any."
    )


class DistrictEfficiency(EfficiencyPair):
    district: str


class EfficiencyResponse(FromSnapshot):
    available: bool = Field(description="False while network_efficiency has not been built.")
    network: EfficiencyPair | None
    districts: list[DistrictEfficiency]


class ModelsResponse(BaseModel):
    source: Source
    available: bool = Field(
        description="False while the model registry tables have not been built."
    )
    active_count: int
    models: list[dict[str, Any]]


class Job(Row):
    job_id: str
    job_type: str | None = None
    status: str = Field(description="queued | running | completed | failed | skipped")
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    triggered_by: str | None = None
    flow_run_id: str | None = None
    result_summary: Any = None


class TriggerResponse(BaseModel):
    job_id: str
    status: Literal["accepted"]
    mode: Literal["prefect", "local"]
    flow_run_id: str | None = None
    status_url: str


class ProblemResponse(BaseModel):
    detail: str


class ConflictResponse(ProblemResponse):
    running_job_id: str | None = None


class NodeFreshness(BaseModel):
    node_id: str
    last_reading_at: datetime | None
    lag_seconds: float | None
    is_stale: bool


class Component(BaseModel):
    reachable: bool
    detail: str | None = None


class CacheComponent(Component):
    cycle_id: str | None = None
    published_at: datetime | None = None
    age_seconds: float | None = None


class ProcessingService(BaseModel):
    running: bool
    current_cycle: Job | None = Field(description="The cycle running now, if any.")
    last_cycle: Job | None = Field(
        description="The last finished cycle (completed, failed or skipped)."
    )
    last_successful_at: datetime | None


class DataFreshness(BaseModel):
    latest_reading_at: datetime | None
    stale_after_seconds: int
    stale_nodes: int
    nodes: list[NodeFreshness]


class StatusResponse(BaseModel):
    status: Literal["ok", "degraded", "stale"] = Field(
        description="`degraded` when a component or part of the network is failing, else `stale` when "
        "data or cycles are older than the threshold, else `ok`."
    )
    is_degraded: bool
    is_stale: bool
    reasons: list[str]
    checked_at: datetime
    target: str
    processing_service: ProcessingService
    data_freshness: DataFreshness
    active_models: list[dict[str, Any]]
    redis: CacheComponent
    database: Component
