"""`water dashboard`: run the Streamlit app on the chosen target, read-only, offline.

Streamlit runs as its own program (`python -m streamlit run dashboard/app.py`); this module
builds its command line and environment. The flags keep it local and quiet: no browser is
opened, no usage statistics are sent, no file watcher, no "Deploy" button.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from api.store import open_readonly
from flows.kernel.settings import DASHBOARD_PORT, Target

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = DASHBOARD_PORT


def command(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--global.developmentMode",
        "false",
        "--theme.base",
        "light",
    ]


def environment(target: Target, base: dict[str, str] | None = None) -> dict[str, str]:
    """The process environment with the target pinned (`--target` wins over WATER_TARGET)."""
    env = dict(os.environ if base is None else base)
    env.update(target.dbt_env())
    return env


def serve(
    target: Target,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    echo: Callable[[str], None] = print,
) -> None:
    """Replace this process with Streamlit's server (signals and exit code are then its own)."""

    # Fail here, in one line, rather than on every page: the warehouse must be readable.
    open_readonly(target).close()
    echo(f"water dashboard on http://{host}:{port} (read-only, {target.describe()})")
    sys.stdout.flush()
    os.execve(sys.executable, command(host, port), environment(target))
