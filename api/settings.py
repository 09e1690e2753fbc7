"""API settings, read from the environment only (plus the optional `.env` that flows.kernel.settings reads).

Auth is on unless switched off explicitly, and there is no default key: with auth on and neither
`WATER_API_JWT_SECRET` nor `WATER_API_JWT_PUBLIC_KEY` set, `load_api_settings` raises a one-line
`ApiConfigError` and the API does not start.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from flows.kernel.contracts import FRESHNESS_LAG
from flows.kernel.settings import ConfigError, Settings, Target, load_settings

# RFC 7518 3.2: an HMAC key must be at least as long as the hash output (256 bits for HS256).
MIN_HS256_SECRET_BYTES = 32
# jwt_algorithm when the key is a JWKS URL: RS256 tokens, the signing key picked by their `kid`.
JWKS_ALGORITHM = "RS256+JWKS"
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")
_RATE_SECONDS = {"second": 1, "minute": 60, "hour": 3600}
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?$")


class ApiConfigError(ConfigError):
    """The API's configuration is unusable; the message says which variable and why."""


@dataclass(frozen=True)
class RateLimit:
    """At most `count` requests per `period_s` seconds."""

    count: int
    period_s: int

    def describe(self) -> str:
        unit = {1: "second", 60: "minute", 3600: "hour"}[self.period_s]
        return f"{self.count}/{unit}"


@dataclass(frozen=True)
class ApiSettings:
    target: Target
    redis_url: str | None
    auth_enabled: bool
    # The key material never appears in repr() or logs (with JWKS: the key set's URL).
    jwt_key: str | None = field(default=None, repr=False)
    jwt_algorithm: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_s: int = 30
    # JWKS: at most one forced refetch of the key set per this many seconds (unknown kids).
    jwks_refresh_s: int = 30
    cors_origins: tuple[str, ...] = ()
    trigger_rate: RateLimit = RateLimit(6, 60)
    prefect_api_url: str | None = None
    cycle_deployment: str = "processing-cycle/on-demand"
    stale_after_s: int = int(FRESHNESS_LAG.total_seconds())
    cache_ttl_hint_s: int = 21600

    @property
    def verifies_tokens(self) -> bool:
        """A key is configured, so bearer tokens can be checked (the trigger needs this)."""
        return self.jwt_key is not None

    def describe(self) -> str:
        auth = f"auth {self.jwt_algorithm}" if self.auth_enabled else "AUTH OFF for reads"
        return f"{self.target.describe()}; redis {'on' if self.redis_url else 'off'}; {auth}"


def parse_rate(text: str) -> RateLimit:
    match = _RATE.match(text)
    if not match or int(match.group(1)) < 1:
        raise ApiConfigError(
            f"WATER_API_TRIGGER_RATE={text!r} is not a rate like 6/minute (N/second|minute|hour, N >= 1)"
        )
    return RateLimit(int(match.group(1)), _RATE_SECONDS[match.group(2)])


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"on", "true", "1", "yes"}:
        return True
    if value in {"off", "false", "0", "no"}:
        return False
    raise ApiConfigError(f"{name}={value!r} must be on or off")


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ApiConfigError(f"{name}={value!r} must be a whole number of seconds >= 1")
    return int(value)


def _whole_seconds(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ApiConfigError(f"{name}={value!r} must be a whole number of seconds >= 0")
    return int(value)


def _public_key(value: str) -> str:
    """PEM text, or the path of a PEM file (handy for mounted secrets)."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.replace("\\n", "\n")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ApiConfigError(
            "WATER_API_JWT_PUBLIC_KEY is neither PEM text nor the path of a readable file"
        )
    return path.read_text()


def _jwt_key(env: dict[str, str]) -> tuple[str | None, str | None]:
    secret = env.get("WATER_API_JWT_SECRET") or None
    public = env.get("WATER_API_JWT_PUBLIC_KEY") or None
    jwks = env.get("WATER_API_JWKS_URL") or None
    if sum(1 for v in (secret, public, jwks) if v) > 1:
        raise ApiConfigError(
            "set only one of WATER_API_JWT_SECRET (HS256), WATER_API_JWT_PUBLIC_KEY (RS256)"
            " and WATER_API_JWKS_URL (RS256 keys from the identity provider)"
        )
    if jwks:
        if not re.match(r"^https?://", jwks):
            raise ApiConfigError(f"WATER_API_JWKS_URL={jwks!r} is not an http(s) URL")
        return jwks, JWKS_ALGORITHM
    if secret:
        if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
            raise ApiConfigError(
                f"WATER_API_JWT_SECRET is too short for HS256: use at least {MIN_HS256_SECRET_BYTES} bytes"
            )
        return secret, "HS256"
    if public:
        pem = _public_key(public)
        try:
            key = load_pem_public_key(pem.encode())
        except ValueError:
            raise ApiConfigError("WATER_API_JWT_PUBLIC_KEY is not a PEM public key") from None
        if not isinstance(key, RSAPublicKey):
            raise ApiConfigError("WATER_API_JWT_PUBLIC_KEY must be an RSA public key (RS256)")
        return pem, "RS256"
    return None, None


def _origins(env: dict[str, str]) -> tuple[str, ...]:
    raw = env.get("WATER_API_CORS_ORIGINS", "")
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin == "*":
            raise ApiConfigError(
                "WATER_API_CORS_ORIGINS must list origins explicitly; '*' is not allowed"
            )
        if not _ORIGIN.match(origin):
            raise ApiConfigError(
                f"WATER_API_CORS_ORIGINS entry {origin!r} is not an origin like https://dash.example.org"
            )
    return origins


def load_api_settings(
    env: dict[str, str] | None = None,
    *,
    target_name: str | None = None,
    insecure_no_auth: bool = False,
    base: Settings | None = None,
) -> ApiSettings:
    """Settings for `water api`; raises ApiConfigError (one line) when they cannot work."""
    base = base or load_settings(env)
    if env is None:
        env = dict(os.environ)
    auth_enabled = _flag(env, "WATER_API_AUTH", True) and not insecure_no_auth
    key, algorithm = _jwt_key(env)
    if auth_enabled and key is None:
        raise ApiConfigError(
            "auth is on but no key is set: export WATER_API_JWT_SECRET (HS256, >= 32 bytes), "
            "WATER_API_JWT_PUBLIC_KEY (RS256 PEM) or WATER_API_JWKS_URL, or run with "
            "WATER_API_AUTH=off for a local demo"
        )
    rate_text = env.get("WATER_API_TRIGGER_RATE", "").strip()
    return ApiSettings(
        target=base.target(target_name),
        redis_url=base.redis_url,
        auth_enabled=auth_enabled,
        jwt_key=key,
        jwt_algorithm=algorithm,
        jwt_audience=env.get("WATER_API_JWT_AUDIENCE") or None,
        jwt_issuer=env.get("WATER_API_JWT_ISSUER") or None,
        jwt_leeway_s=_positive_int(env, "WATER_API_JWT_LEEWAY_S", 30),
        jwks_refresh_s=_whole_seconds(env, "WATER_API_JWKS_REFRESH_S", 30),
        cors_origins=_origins(env),
        trigger_rate=parse_rate(rate_text) if rate_text else RateLimit(6, 60),
        prefect_api_url=env.get("PREFECT_API_URL") or None,
        cycle_deployment=env.get("WATER_CYCLE_DEPLOYMENT") or "processing-cycle/on-demand",
        stale_after_s=_positive_int(
            env, "WATER_API_STALE_AFTER_S", int(FRESHNESS_LAG.total_seconds())
        ),
        cache_ttl_hint_s=_positive_int(env, "WATER_REDIS_TTL_S", 21600),
    )
