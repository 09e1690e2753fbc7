"""`water serve`: every deployment in `prefect.yaml`, scheduled and served from one process.

`prefect.yaml` is the one place deployments are declared: `prefect deploy --all` reads it for
a Prefect server with workers, and this module reads the same file to serve the same
deployments without a work pool. With `PREFECT_API_URL` set, the deployments register with
that server; otherwise a local Prefect server is started on 127.0.0.1 (first start ~25 s)
and stopped again when `water serve` exits.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect import serve as prefect_serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.schedules import Cron, Interval
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.kernel.settings import PROJECT_ROOT, ConfigError

PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
# Values for `{{ $VAR }}` placeholders in prefect.yaml when the variable is unset.
PLACEHOLDER_DEFAULTS = {"WATER_LOCAL_TIMEZONE": "Europe/Rome"}
_ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")
SERVER_START_TIMEOUT_S = 180.0
RUNNER_POLL_S = 2.0  # seconds between the runner's queries for scheduled and triggered runs


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    schedules: tuple[dict[str, Any], ...] = ()
    concurrency_limit: dict[str, Any] | None = None

    @property
    def flow_name(self) -> str:
        return self.entrypoint.rsplit(":", 1)[1]


def deployment_specs(
    path: Path = PREFECT_YAML, env: dict[str, str] | None = None
) -> list[DeploymentSpec]:
    """The deployments of prefect.yaml, with `{{ $VAR }}` placeholders filled from `env`."""
    env = dict(os.environ) if env is None else env
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the deployments ({exc})") from exc
    specs = []
    for entry in _fill_placeholders(document.get("deployments") or [], env, path):
        for key in ("name", "entrypoint"):
            if not entry.get(key):
                raise ConfigError(f"{path}: a deployment has no {key}")
        specs.append(
            DeploymentSpec(
                name=entry["name"],
                entrypoint=entry["entrypoint"],
                description=" ".join(str(entry.get("description") or "").split()),
                parameters=dict(entry.get("parameters") or {}),
                tags=tuple(entry.get("tags") or ()),
                schedules=tuple(entry.get("schedules") or ()),
                concurrency_limit=entry.get("concurrency_limit"),
            )
        )
    return specs


def _fill_placeholders(value: Any, env: dict[str, str], path: Path) -> Any:
    if isinstance(value, dict):
        return {k: _fill_placeholders(v, env, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_placeholders(v, env, path) for v in value]
    if isinstance(value, str):

        def replace(match: re.Match) -> str:
            name = match.group(1)
            filled = env.get(name) or PLACEHOLDER_DEFAULTS.get(name)
            if filled is None:
                raise ConfigError(f"{path}: placeholder {match.group(0)} needs the variable {name}")
            return filled

        return _ENV_PLACEHOLDER.sub(replace, value)
    return value


def load_entrypoint(entrypoint: str):
    """The flow object of `path/to/module.py:name`, imported as a module of the project.

    (Prefect's script loader would register flows/orchestration/flows.py under the name `flows`, shadowing
    the `flows` package; importing it as `flows.orchestration.flows` keeps one copy of every module.)
    """

    file_part, name = entrypoint.rsplit(":", 1)
    relative = Path(file_part)
    if relative.is_absolute():
        relative = relative.relative_to(PROJECT_ROOT)
    if relative.suffix != ".py" or not (PROJECT_ROOT / relative).is_file():
        raise ConfigError(f"entrypoint {entrypoint!r}: no such Python file under {PROJECT_ROOT}")
    module = importlib.import_module(".".join(relative.with_suffix("").parts))
    flow = getattr(module, name, None)
    if not isinstance(flow, Flow):
        raise ConfigError(f"entrypoint {entrypoint!r}: {name} is not a Prefect flow")
    return flow


def build_deployments(specs: list[DeploymentSpec], target: str | None = None) -> list[Any]:
    """RunnerDeployments for `prefect.serve`, equal to what `prefect deploy` registers."""

    deployments = []
    for spec in specs:
        flow = load_entrypoint(spec.entrypoint)
        schedules = []
        for item in spec.schedules:
            if "cron" in item:
                schedules.append(Cron(item["cron"], timezone=item.get("timezone")))
            elif "interval" in item:
                schedules.append(Interval(float(item["interval"]), timezone=item.get("timezone")))
            else:
                raise ConfigError(
                    f"deployment {spec.name}: only cron and interval schedules are served"
                )
        limit = None
        if spec.concurrency_limit:
            limit = ConcurrencyLimitConfig(
                limit=int(spec.concurrency_limit["limit"]),
                collision_strategy=spec.concurrency_limit.get("collision_strategy", "ENQUEUE"),
            )
        parameters = dict(spec.parameters)
        if target is not None and "target" in flow.parameters.properties:
            parameters["target"] = target
        deployments.append(
            flow.to_deployment(
                name=spec.name,
                description=spec.description or None,
                parameters=parameters,
                tags=list(spec.tags),
                schedules=schedules or None,
                concurrency_limit=limit,
            )
        )
    return deployments


# --------------------------------------------------------------------------- the server


def api_is_up(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as response:  # noqa: S310 - local URL we built
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_server_env(port: int) -> dict[str, str]:
    """Settings of the local server: its UI talks to this port's API (Prefect's UI would
    otherwise call the default :4200 and show nothing), and no telemetry or promotions."""
    return {
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        "DO_NOT_TRACK": "1",
    }


@contextmanager
def prefect_api(port: int = 4200, echo: Callable[[str], None] = print) -> Iterator[str]:
    """PREFECT_API_URL if set; else a local server on 127.0.0.1 (reused if one answers)."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not api_is_up(configured, timeout_s=10):
            raise ConfigError(f"PREFECT_API_URL={configured} does not answer /health")
        echo(f"using the Prefect server at {configured}")
        yield configured
        return
    api_url = f"http://127.0.0.1:{port}/api"
    if api_is_up(api_url):
        echo(f"using the Prefect server already running at {api_url}")
        yield api_url
        return
    echo(f"starting a local Prefect server on http://127.0.0.1:{port} (first start takes ~25 s)")
    env = {**os.environ, **local_server_env(port)}
    server = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not api_is_up(api_url):
            if server.poll() is not None:
                detail = (server.stderr.read() or b"").decode(errors="replace").strip().splitlines()
                raise ConfigError(
                    f"the local Prefect server exited with code {server.returncode}: "
                    f"{detail[-1] if detail else 'no output'}"
                )
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"the local Prefect server did not answer within {SERVER_START_TIMEOUT_S:.0f}s"
                )
            time.sleep(0.5)
        echo(f"Prefect UI: http://127.0.0.1:{port}")
        yield api_url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def serve(target: str | None = None, port: int = 4200, echo: Callable[[str], None] = print) -> None:
    """Serve every deployment of prefect.yaml until interrupted."""
    # Imported when serving starts: prometheus_client is not needed to list deployments.
    from flows.orchestration.worker_metrics import WorkerMetrics

    specs = deployment_specs()
    metrics = WorkerMetrics()
    address = metrics.listen()
    if address:
        echo(f"worker metrics on {address}")
    with prefect_api(port=port, echo=echo) as api_url:
        os.environ["PREFECT_API_URL"] = api_url  # flow-run subprocesses inherit it

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            deployments = build_deployments(specs, target=target)
            for spec in specs:
                when = ", ".join(
                    f"{s.get('cron') or s.get('interval')} ({s.get('timezone') or 'UTC'})"
                    for s in spec.schedules
                )
                echo(f"  {spec.flow_name}/{spec.name}: {when or 'on demand'}")
            # Prefect's runner polls for runs every 10 s by default, ~5 s added to each
            # on-demand trigger; a poll every 2 s costs a local server nothing.
            poll_s = float(os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", RUNNER_POLL_S))
            metrics.deployments.set(len(deployments))
            prefect_serve(*deployments, print_starting_message=False, query_seconds=poll_s)
