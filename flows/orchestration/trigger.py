"""Prefect client calls the API trigger makes when a Prefect server is configured: find an
active run of the cycle deployment, create one, read one (the API stays free of prefect)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments.flow_runs import arun_deployment
from prefect.exceptions import ObjectNotFound


@dataclass(frozen=True)
class FlowRunInfo:
    state_type: str | None  # scheduled | pending | running | completed | failed | ...
    state_name: str | None
    created: datetime | None
    start_time: datetime | None


async def active_flow_run(deployment_name: str, tag: str) -> str | None:
    """A flow run of the deployment that is pending or running, or that carries `tag` and is
    still scheduled."""
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(deployment_name)
        by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        active = await client.read_flow_runs(
            deployment_filter=by_deployment,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                )
            ),
            limit=1,
        )
        if not active:
            active = await client.read_flow_runs(
                deployment_filter=by_deployment,
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    ),
                    tags=FlowRunFilterTags(all_=[tag]),
                ),
                limit=1,
            )
    return str(active[0].id) if active else None


async def create_flow_run(deployment_name: str, tag: str, parameters: dict[str, Any]) -> str:
    """Create a flow run of the deployment and return its id at once (no waiting)."""
    flow_run = await arun_deployment(
        deployment_name, timeout=0, tags=[tag], parameters=parameters, as_subflow=False
    )
    return str(flow_run.id)


async def read_flow_run(run_id: UUID) -> FlowRunInfo | None:
    async with get_client() as client:
        try:
            run = await client.read_flow_run(run_id)
        except ObjectNotFound:
            return None
    return FlowRunInfo(
        state_type=run.state.type.value.lower() if run.state else None,
        state_name=run.state.name if run.state else None,
        created=run.created,
        start_time=run.start_time,
    )
