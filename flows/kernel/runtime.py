"""Who and when: the clock, job ids and the runner id every job row and lock note carries."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def new_job_id() -> str:
    return str(uuid.uuid4())
