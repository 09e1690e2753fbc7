"""API security and robustness on a real PostgreSQL database and real Redis (no cycle needed):
settings refusals, bearer JWT checks (HS256 and RS256), scopes, the trigger's rate limit and
409, CORS, and error bodies without exception text."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import psycopg
import pytest
import redis
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiConfigError, load_api_settings
from flows.cli.main import main as water
from flows.pipeline.lock import LOCK_FOR_JOB, RunLock

SECRET = "test-secret-0123456789-abcdefghijklmnop"  # 40 bytes, test only
# The API tests' own Redis database (tests/test_api.py publishes there); emptied per test here.
EMPTY_REDIS = "redis://127.0.0.1:6379/12"


def _env(target, **extra) -> dict[str, str]:
    env = {**target.dbt_env(), "REDIS_URL": EMPTY_REDIS, "WATER_API_JWT_SECRET": SECRET}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def _token(
    scope: str = "read", key: str = SECRET, algorithm: str = "HS256", ttl: int = 300, **claims
) -> str:
    payload = {"sub": "tester", "scope": scope, "exp": int(time.time()) + ttl, **claims}
    return jwt.encode(payload, key, algorithm=algorithm)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def _empty_redis():
    client = redis.Redis.from_url(EMPTY_REDIS)
    client.flushdb()
    client.close()


@pytest.fixture
def client(pg_target):
    app = create_app(load_api_settings(_env(pg_target)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# -- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"WATER_API_JWT_SECRET": None}, "auth is on but no key is set"),
        ({"WATER_API_JWT_SECRET": "short"}, "too short for HS256"),
        ({"WATER_API_JWT_PUBLIC_KEY": "/nonexistent/key.pem"}, "set only one of"),
        ({"WATER_API_CORS_ORIGINS": "*"}, "'*' is not allowed"),
        ({"WATER_API_CORS_ORIGINS": "dash.example.org"}, "is not an origin"),
        ({"WATER_API_TRIGGER_RATE": "lots"}, "is not a rate"),
        ({"WATER_API_AUTH": "maybe"}, "must be on or off"),
    ],
)
def test_unusable_settings_are_refused_with_one_line(duckdb_target, extra, fragment):
    with pytest.raises(ApiConfigError) as info:
        load_api_settings(_env(duckdb_target, **extra))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_public_key_must_be_pem_or_a_file(duckdb_target):
    env = _env(
        duckdb_target, WATER_API_JWT_SECRET=None, WATER_API_JWT_PUBLIC_KEY="/nonexistent/key.pem"
    )
    with pytest.raises(ApiConfigError, match="neither PEM text nor the path"):
        load_api_settings(env)


def test_secret_is_not_in_the_settings_repr(duckdb_target):
    settings = load_api_settings(_env(duckdb_target))
    assert SECRET not in repr(settings)
    assert SECRET not in settings.describe()


def test_water_api_refuses_to_start_without_a_key(monkeypatch, tmp_path):
    for name in ("WATER_API_JWT_SECRET", "WATER_API_JWT_PUBLIC_KEY", "WATER_API_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WATER_DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    result = CliRunner().invoke(water, ["api", "--port", "1"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "auth is on but no key is set" in result.output


# -- bearer tokens ------------------------------------------------------------------------------
READ_PATH = "/api/v1/models/status"  # answers on an empty warehouse too


def test_a_read_token_reads(client):
    response = client.get(READ_PATH, headers=_bearer(_token("read")))
    assert response.status_code == 200
    assert response.json() == {
        "source": "database",
        "available": False,
        "active_count": 0,
        "models": [],
    }


def test_no_token_is_401_with_a_bearer_challenge(client):
    response = client.get(READ_PATH)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        (_token("read", ttl=-3600), "token expired"),
        (
            _token("read", key="another-secret-of-sufficient-length-000"),
            "token signature is invalid",
        ),
        ("not.a.jwt", "token is malformed or uses an unaccepted algorithm"),
        (
            jwt.encode(
                {"sub": "x", "scope": "read", "exp": int(time.time()) + 60}, None, algorithm="none"
            ),
            "token is malformed or uses an unaccepted algorithm",
        ),
        (
            jwt.encode({"sub": "x", "scope": "read"}, SECRET, algorithm="HS256"),
            "token lacks the 'exp' claim",
        ),
    ],
)
def test_bad_tokens_are_401(client, token, detail):
    response = client.get(READ_PATH, headers=_bearer(token))
    assert response.status_code == 401
    assert response.json() == {"detail": detail}
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_wrong_scope_is_403(client):
    response = client.get(READ_PATH, headers=_bearer(_token("trigger")))
    assert response.status_code == 403
    assert response.json() == {"detail": "token lacks the 'read' scope"}
    response = client.post("/api/v1/processing/trigger", headers=_bearer(_token("read")))
    assert response.status_code == 403
    assert response.json() == {"detail": "token lacks the 'trigger' scope"}


def test_scp_list_claim_is_accepted(client):
    token = jwt.encode(
        {"sub": "svc", "scp": ["read"], "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
    )
    assert client.get(READ_PATH, headers=_bearer(token)).status_code == 200


def test_audience_and_issuer_are_enforced_when_configured(pg_target):
    env = _env(
        pg_target, WATER_API_JWT_AUDIENCE="water-api", WATER_API_JWT_ISSUER="https://idp.example"
    )
    with TestClient(create_app(load_api_settings(env))) as c:
        good = _token("read", aud="water-api", iss="https://idp.example")
        assert c.get(READ_PATH, headers=_bearer(good)).status_code == 200
        wrong_aud = _token("read", aud="other", iss="https://idp.example")
        assert c.get(READ_PATH, headers=_bearer(wrong_aud)).json() == {
            "detail": "token audience is not accepted"
        }
        wrong_iss = _token("read", aud="water-api", iss="https://evil.example")
        assert c.get(READ_PATH, headers=_bearer(wrong_iss)).json() == {
            "detail": "token issuer is not accepted"
        }


def test_rs256_public_key_verifies_and_rejects_algorithm_confusion(pg_target, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public_pem)
    env = _env(pg_target, WATER_API_JWT_SECRET=None, WATER_API_JWT_PUBLIC_KEY=str(key_file))
    settings = load_api_settings(env)
    assert settings.jwt_algorithm == "RS256"
    with TestClient(create_app(settings)) as c:
        assert (
            c.get(
                READ_PATH, headers=_bearer(_token("read", key=private, algorithm="RS256"))
            ).status_code
            == 200
        )
        # The public key used as an HMAC secret must not verify (algorithm confusion).
        response = c.get(
            READ_PATH,
            headers=_bearer(
                _hs256_by_hand({"sub": "x", "scope": "read", "exp": 9999999999}, public_pem)
            ),
        )
        assert response.status_code == 401
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        response = c.get(READ_PATH, headers=_bearer(_token("read", key=other, algorithm="RS256")))
        assert response.json() == {"detail": "token signature is invalid"}


def test_jwks_url_follows_the_identity_providers_key_rotation(pg_target):
    """WATER_API_JWKS_URL: the key is picked by the token's `kid` from a real HTTP JWKS
    endpoint; a key added by rotation is fetched on first use, without a restart."""
    keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in "abc"}
    published = ["a"]
    fetches = []

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's API
            fetches.append(list(published))
            body = json.dumps(
                {
                    "keys": [
                        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys[k].public_key())),
                         "kid": k, "use": "sig", "alg": "RS256"}
                        for k in published
                    ]
                }
            ).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"

    def signed(kid: str, key=None) -> dict[str, str]:
        payload = {"sub": "t", "scope": "read", "exp": int(time.time()) + 300}
        return _bearer(jwt.encode(payload, key or keys[kid], "RS256", headers={"kid": kid}))

    try:
        # No pause between forced refetches here (default 30 s, protecting the provider).
        env = _env(
            pg_target,
            WATER_API_JWT_SECRET=None,
            WATER_API_JWKS_URL=url,
            WATER_API_JWKS_REFRESH_S="0",
        )
        with TestClient(create_app(load_api_settings(env))) as c:
            assert c.get(READ_PATH, headers=signed("a")).status_code == 200
            # Key b is not published yet: refused, naming no key of the provider.
            response = c.get(READ_PATH, headers=signed("b"))
            assert response.status_code == 401
            assert response.json() == {
                "detail": "token names no signing key of the identity provider"
            }
            published.append("b")  # the provider rotates in key b
            assert c.get(READ_PATH, headers=signed("b")).status_code == 200
            # kid a with another key's signature is still a bad signature.
            response = c.get(READ_PATH, headers=signed("a", key=keys["c"]))
            assert response.json() == {"detail": "token signature is invalid"}
        assert fetches[0] == ["a"] and fetches[-1] == ["a", "b"]
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ApiConfigError, match="set only one of"):
        load_api_settings(_env(pg_target, WATER_API_JWKS_URL=url))


def _hs256_by_hand(claims: dict, key: bytes) -> str:
    """PyJWT refuses to HMAC-sign with a PEM key, so an attacker's token is built by hand."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        + b"."
        + b64(json.dumps(claims).encode())
    )
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


def test_auth_off_opens_reads_but_never_the_trigger(pg_target):
    env = _env(pg_target, WATER_API_AUTH="off", WATER_API_JWT_SECRET=None)
    with TestClient(create_app(load_api_settings(env))) as c:
        assert c.get(READ_PATH).status_code == 200
        response = c.post("/api/v1/processing/trigger")
        assert response.status_code == 403
        assert "needs a token key" in response.json()["detail"]
    # With a key configured, reads stay open and the trigger still demands its scope.
    env = _env(pg_target, WATER_API_AUTH="off")
    with TestClient(create_app(load_api_settings(env))) as c:
        assert c.get(READ_PATH).status_code == 200
        assert c.post("/api/v1/processing/trigger").status_code == 401


# -- trigger: 409 while a cycle runs, then the rate limit ------------------------------------------
def test_trigger_conflicts_while_a_cycle_holds_the_lock_and_is_rate_limited(pg_target):
    env = _env(pg_target, WATER_API_TRIGGER_RATE="2/minute")
    lock = RunLock(pg_target, LOCK_FOR_JOB["cycle"])
    assert lock.acquire()
    try:
        with TestClient(create_app(load_api_settings(env))) as c:
            headers = _bearer(_token("trigger"))
            for _ in range(2):
                response = c.post("/api/v1/processing/trigger", headers=headers)
                assert response.status_code == 409
                assert response.json() == {
                    "detail": "a processing cycle is already running",
                    "running_job_id": "unknown",  # the lock holder wrote no job row
                }
            response = c.post("/api/v1/processing/trigger", headers=headers)
            assert response.status_code == 429
            assert 1 <= int(response.headers["retry-after"]) <= 60
            # Another client has its own allowance.
            other = _bearer(_token("trigger", sub="scheduler"))
            assert c.post("/api/v1/processing/trigger", headers=other).status_code == 409
            metrics = c.get("/metrics").text
            assert 'water_api_triggers_total{outcome="conflict"} 3.0' in metrics
            assert 'water_api_triggers_total{outcome="rate_limited"} 1.0' in metrics
    finally:
        lock.release()


# -- CORS -----------------------------------------------------------------------------------------
def test_cors_allows_only_listed_origins_and_never_credentials(pg_target):
    env = _env(pg_target, WATER_API_CORS_ORIGINS="https://dash.example.org, http://localhost:3000")
    with TestClient(create_app(load_api_settings(env))) as c:
        preflight = {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        ok = c.options(READ_PATH, headers={"Origin": "https://dash.example.org", **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://dash.example.org"
        assert "access-control-allow-credentials" not in ok.headers
        denied = c.options(READ_PATH, headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in denied.headers
        simple = c.get(READ_PATH, headers={"Origin": "https://evil.example", **_bearer(_token())})
        assert "access-control-allow-origin" not in simple.headers


def test_no_cors_headers_without_an_allow_list(client):
    response = client.get(
        READ_PATH, headers={"Origin": "https://dash.example.org", **_bearer(_token())}
    )
    assert "access-control-allow-origin" not in response.headers


# -- failures answer without exception text ---------------------------------------------------------
def test_a_broken_table_answers_503_without_exception_text(client, pg_target):
    with psycopg.connect(autocommit=True, **pg_target.pg_dsn_parts) as con:
        con.execute("create schema water_infrastructure")
        con.execute("create table water_infrastructure.nodes (node_id text)")  # columns missing
    response = client.get("/api/v1/nodes", headers=_bearer(_token()))
    assert response.status_code == 503
    assert response.json() == {"detail": "database unavailable; try again shortly"}
    assert "node_name" not in response.text and "Traceback" not in response.text


def test_unreachable_database_is_not_ready_but_alive(pg_target):
    gone = pg_target.__class__(
        "postgres", pg_dsn_parts={**pg_target.pg_dsn_parts, "dbname": "water_no_such_db"}
    )
    env = _env(gone)
    with TestClient(create_app(load_api_settings(env))) as c:
        assert c.get("/health").json() == {"status": "alive"}
        ready = c.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["database"] is False
        status = c.get("/api/v1/status", headers=_bearer(_token()))
        assert status.status_code == 200
        body = status.json()
        assert body["status"] == "degraded"
        assert "database unreachable" in body["reasons"]
        assert "water_no_such_db" not in str(body["reasons"])


def test_unreachable_redis_falls_back_and_reports_degraded(pg_target):
    env = _env(pg_target, REDIS_URL="redis://127.0.0.1:1/0")
    with TestClient(create_app(load_api_settings(env))) as c:
        assert c.get("/ready").status_code == 503
        body = c.get("/api/v1/status", headers=_bearer(_token())).json()
        assert body["redis"]["reachable"] is False
        assert body["status"] == "degraded"
        nodes = c.get("/api/v1/nodes", headers=_bearer(_token()))
        assert nodes.status_code == 200
        assert nodes.json()["source"] == "database"


def test_validation_errors_are_422_in_fastapi_shape(client):
    response = client.get("/api/v1/anomalies?hours=0", headers=_bearer(_token()))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "hours"]
    assert set(error) <= {"type", "loc", "msg", "input"}


# -- trigger through a Prefect server ----------------------------------------------------------------
def test_trigger_with_prefect_creates_a_flow_run_of_the_on_demand_deployment(
    pg_target, monkeypatch
):
    """A real (temporary) Prefect server with the cycle deployment registered, no worker: the
    trigger creates the flow run and returns its id as the job id; the job reads as queued
    until a worker picks it up, and a second trigger meanwhile is a 409."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.orchestration.flows import processing_cycle

    with prefect_test_harness(server_startup_timeout=120):
        api_url = PREFECT_API_URL.value()
        monkeypatch.setenv("PREFECT_API_URL", api_url)  # the API's threads read the environment
        processing_cycle.to_deployment(name="on-demand").apply()
        env = _env(pg_target, PREFECT_API_URL=api_url)
        with TestClient(create_app(load_api_settings(env))) as c:
            headers = _bearer(_token("trigger read"))
            first = c.post("/api/v1/processing/trigger", headers=headers)
            assert first.status_code == 202, first.text
            body = first.json()
            assert body["mode"] == "prefect" and body["job_id"] == body["flow_run_id"]
            job = c.get(body["status_url"], headers=headers)
            assert job.status_code == 200
            assert job.json()["status"] == "queued"
            assert job.json()["prefect_state"] == "Scheduled"
            second = c.post("/api/v1/processing/trigger", headers=headers)
            assert second.status_code == 409
            assert second.json()["running_job_id"] == body["job_id"]
