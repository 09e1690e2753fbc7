"""The container files' rules, read from the files (no podman): `make containers-test` runs them.

Every variable deploy/compose.yml reads is listed in .env.example; every service has a
healthcheck and keeps its state in a named volume; the images run as a non-root user (PostgreSQL
and Redis as their Debian users) and no secret is baked in.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINERFILES = [
    DEPLOY / "Containerfile",
    DEPLOY / "postgres" / "Containerfile",
    DEPLOY / "redis" / "Containerfile",
]


def test_env_example_lists_every_variable_compose_reads():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "compose.yml").read_text()))
    listed = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert used and not used - listed, sorted(used - listed)


def test_every_service_has_a_healthcheck_and_a_named_volume():
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    volumes = set(compose["volumes"])
    for name, service in compose["services"].items():
        assert service.get("healthcheck", {}).get("test"), name
        assert {v.split(":")[0] for v in service.get("volumes", [])} & volumes, name


def test_images_run_unprivileged_without_baked_secrets():
    for path in CONTAINERFILES:
        text = path.read_text()
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), path
        for line in re.findall(r"^(?:ENV|ARG)\s.*$", text, re.M):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY=", line), (path, line)
