"""OAuth2 bearer JWTs with scopes.

Tokens come from the utility's identity provider (or `docs/api.md`'s minting recipe); the API
only verifies them: signature (HS256 secret, RS256 public key, or RS256 with the key named by the
token's `kid` in the provider's JWKS, `WATER_API_JWKS_URL`: PyJWT's PyJWKClient caches the set
and fetches it again when a token names a key it does not hold, so key rotation needs no
restart), `exp` (required), optional
audience and issuer, and the scopes in `scope` (space-separated, RFC 9068) or `scp` (list).
Scopes: `read` for every read when auth is on, `trigger` for starting a cycle, always.
Token text and key material are never logged.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.settings import JWKS_ALGORITHM, ApiSettings

log = logging.getLogger(__name__)

SCOPES = {
    "read": "Read status, nodes, metrics, anomalies, predictions, efficiency, jobs.",
    "trigger": "Start a processing cycle.",
}

bearer_scheme = HTTPBearer(
    bearerFormat="JWT",
    scheme_name="bearerJWT",
    description="OAuth2 access token (JWT) carrying the scopes `read` and/or `trigger`.",
    auto_error=False,
)


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]


def _unauthorized(reason: str, error: str = "invalid_token") -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=reason,
        headers={"WWW-Authenticate": f'Bearer error="{error}"'},
    )


class TokenVerifier:
    """Verifies bearer tokens; a token already verified is remembered until it expires.

    Clients send the same token on every request, and a signature check costs more than the
    rest of a cached read; the memo holds only tokens that passed every check, keyed by the
    token's full text, and re-checks expiry on each use.
    """

    MEMO_SIZE = 4096

    def __init__(self, settings: ApiSettings):
        self._key = settings.jwt_key
        self._algorithm = settings.jwt_algorithm
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_s
        self._verified: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._jwks: jwt.PyJWKClient | None = None
        if self._algorithm == JWKS_ALGORITHM and self._key is not None:
            # The key *set* is cached (5 min) and fetched again for an unknown kid. Not
            # cache_keys=True: its lru_cache also memoises the forced refresh, so a key rotated
            # in after the first miss would never be seen.
            self._jwks = jwt.PyJWKClient(
                self._key,
                cache_jwk_set=True,
                lifespan=300,
                timeout=5,
                cooldown_duration=settings.jwks_refresh_s,
            )
            self._algorithm = "RS256"

    def verify(self, token: str) -> Principal:
        remembered = self._verified.get(token)
        if remembered is not None:
            expires_at, principal = remembered
            if time.time() <= expires_at + self._leeway:
                return principal
            del self._verified[token]
        principal, expires_at = self._check(token)
        self._verified[token] = (expires_at, principal)
        if len(self._verified) > self.MEMO_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _check(self, token: str) -> tuple[Principal, float]:
        if self._key is None or self._algorithm is None:
            raise _unauthorized("this API has no token key configured", "invalid_request")
        key = self._key
        if self._jwks is not None:
            try:
                key = self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError:
                log.warning("the identity provider's key set (WATER_API_JWKS_URL) is unreachable")
                raise HTTPException(
                    status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                    detail="the token keys cannot be fetched; try again shortly",
                ) from None
            except (jwt.PyJWKClientError, jwt.DecodeError):
                raise _unauthorized("token names no signing key of the identity provider") from None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": ["exp"] + (["iss"] if self._issuer else []),
                    "verify_aud": self._audience is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("token signature is invalid") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            # Covers malformed tokens and wrong algorithms (incl. "none"); the library's text may
            # echo token fragments, so it is not passed on.
            raise _unauthorized("token is malformed or uses an unaccepted algorithm") from None
        principal = Principal(subject=str(claims.get("sub") or "unknown"), scopes=_scopes(claims))
        return principal, float(claims["exp"])


def _scopes(claims: dict) -> frozenset[str]:
    scope = claims.get("scope")
    scp = claims.get("scp")
    found: set[str] = set()
    if isinstance(scope, str):
        found.update(scope.split())
    if isinstance(scp, str):
        found.update(scp.split())
    elif isinstance(scp, list):
        found.update(s for s in scp if isinstance(s, str))
    return frozenset(found)


def _authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    verifier: TokenVerifier = request.app.state.verifier
    if credentials is None:
        raise _unauthorized("missing bearer token", "invalid_request")
    return verifier.verify(credentials.credentials)


def _require(principal: Principal, scope: str) -> Principal:
    if scope not in principal.scopes:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"token lacks the {scope!r} scope",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope" scope="{scope}"'},
        )
    return principal


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


async def require_read(request: Request, credentials: Credentials) -> Principal:
    """Reads need the `read` scope (installed on the read routes only when auth is on)."""
    return _require(_authenticate(request, credentials), "read")


async def require_trigger(request: Request, credentials: Credentials) -> Principal:
    """The trigger always needs a verified token with the `trigger` scope, even with auth off."""
    settings: ApiSettings = request.app.state.settings
    if not settings.verifies_tokens:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="the trigger needs a token key (WATER_API_JWT_SECRET or WATER_API_JWT_PUBLIC_KEY)",
        )
    return _require(_authenticate(request, credentials), "trigger")
