"""Bearer-token verification: a JWT string in, a Principal or an AuthError out.

python-jose checks signatures; everything around them is checked here, because jose is
lenient by default (a token without `exp` or `aud` passes, `crit` is ignored, and the key
type is inferred from the key rather than fixed by the deployment). So:

- one algorithm family per deployment (config refuses HS* beside RS*/ES*), and the token's
  header must name an algorithm from the allow-list: `alg: none` and HS256-signed-with-the-
  public-key tokens die here, before any key is touched;
- only `alg`, `typ` and `kid` may appear in the header (RFC 7515 §4.1.11: a `crit` we do not
  understand must be refused, so we refuse every extension);
- `exp` and a non-empty string `sub` are required; `aud` and `iss` when configured;
  clock leeway is capped at 30 s by the settings;
- tokens longer than `jwt_max_bytes` are refused before they are parsed;
- each segment must be canonical base64url (RFC 7515 §2: the URL-safe alphabet, no padding,
  no stray bits): python's decoder skips characters outside the alphabet, so `token + "!!"`
  would verify as `token` and make endless distinct strings of one token;
- header and claims must be JSON objects of bounded depth with finite numbers, and every
  time claim a finite number: `"exp": NaN` compares false with everything, so it would
  never expire.

The signature is checked on the bytes decoded here, through jose's key objects, so that
jose's own (lenient) parser never sees the token. No FastAPI here: the dependency in
`deps.py` turns AuthError into a 401.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import httpx
from jose import jwk, jws
from jose.exceptions import JOSEError

from .config import Settings
from .observability.logging import get_logger

log = get_logger("service.auth")

ALLOWED_HEADER_KEYS = frozenset({"alg", "typ", "kid"})
# An unknown `kid` refetches the JWKS at most this often (forged kids cost the provider nothing).
JWKS_REFETCH_SECONDS = 30.0
# Keys are refreshed in the background once they are this old, so that a key the provider
# removed stops being accepted within a few minutes, tokens it signed included.
JWKS_MAX_AGE_SECONDS = 120.0
SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
MAX_SAFE_INTEGER = 2**53 - 1
# Verified tokens, remembered by their exact text (signature included) so that a client
# reusing its token skips the HMAC/RSA work; time claims are still checked on every use.
VERIFIED_CACHE_SIZE = 4096


class AuthError(Exception):
    """The token is refused; `reason` is a metric label, `description` safe to show."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


class KeysUnavailable(Exception):
    """The JWKS could not be fetched: verification is impossible, not the token's fault."""


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    claims: Mapping[str, Any] = field(repr=False)


class StaticKeys:
    """A shared secret or a PEM public key, parsed once per algorithm."""

    version = 0  # the key never changes while the process runs

    def __init__(self, material: str) -> None:
        self._material = material
        self._keys: dict[str, Any] = {}

    async def key_for(self, alg: str, kid: str | None) -> Any:
        key = self._keys.get(alg)
        if key is None:
            try:
                key = self._keys[alg] = jwk.construct(self._material, alg)
            except JOSEError as exc:
                raise AuthError("algorithm", "token algorithm does not fit the key") from exc
        return key

    async def aclose(self) -> None:
        return None


class JwksKeys:
    """Keys of an OpenID provider, picked by `kid`.

    An unknown `kid` refetches, at most once per JWKS_REFETCH_SECONDS so that forged kids
    cannot make us hammer the provider. Keys older than JWKS_MAX_AGE_SECONDS are refreshed in
    the background while the current ones keep serving, so that a key the provider removed
    stops verifying within a few minutes. `version` changes whenever the key set does, which
    tells the verifier to forget the tokens it verified with the old set."""

    def __init__(
        self,
        url: str | None,
        client: httpx.AsyncClient | None = None,
        max_age: float = JWKS_MAX_AGE_SECONDS,
        issuer: str | None = None,
    ) -> None:
        # Either the JWKS URL itself, or an OpenID issuer whose discovery document names
        # it (`jwks_uri`), read on the first fetch.
        self._url = url
        self._issuer = issuer
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self.max_age = max_age
        self.version = 0
        self._jwks: dict[str, dict[str, Any]] = {}
        self._constructed: dict[tuple[str, str], Any] = {}
        self._fetched_at = -JWKS_REFETCH_SECONDS
        self._loaded_at = -math.inf
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    def refresh_if_stale(self) -> None:
        """Start a background refresh when the keys are older than `max_age`."""
        if time.monotonic() - self._loaded_at < self.max_age or not self._jwks:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh(force=True))

    async def key_for(self, alg: str, kid: str | None) -> Any:
        self.refresh_if_stale()
        jwk_dict = self._find(kid)
        if jwk_dict is None:
            await self._refresh()
            jwk_dict = self._find(kid)
        if jwk_dict is None:
            if not self._jwks:  # never fetched successfully: the provider is away
                raise KeysUnavailable("no JWKS keys yet")
            raise AuthError("unknown_key", "token key id is not known")
        if jwk_dict.get("alg") not in (None, alg):
            raise AuthError("algorithm", "token algorithm does not fit the key")
        cache_key = (str(jwk_dict.get("kid", "")), alg)
        key = self._constructed.get(cache_key)
        if key is None:
            try:
                key = self._constructed[cache_key] = jwk.construct(jwk_dict, alg)
            except (JOSEError, ValueError, TypeError, KeyError) as exc:
                raise AuthError("algorithm", "token algorithm does not fit the key") from exc
        return key

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._jwks.get(kid)
        # A token without `kid` is only unambiguous when the provider publishes one key.
        return next(iter(self._jwks.values())) if len(self._jwks) == 1 else None

    async def _refresh(self, force: bool = False) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < JWKS_REFETCH_SECONDS:
                return
            self._fetched_at = time.monotonic()
            try:
                if self._url is None:
                    self._url = await self._discover()
                response = await self._client.get(self._url)
                response.raise_for_status()
                keys = response.json()["keys"]
                jwks = {
                    str(k.get("kid", "")): k
                    for k in keys
                    if isinstance(k, dict) and k.get("use", "sig") == "sig"
                }
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                if not self._jwks:
                    raise KeysUnavailable(f"JWKS fetch failed: {type(exc).__name__}") from exc
                return  # keep serving the keys we have
            self._loaded_at = time.monotonic()
            if jwks != self._jwks:
                self._jwks = jwks
                self._constructed.clear()
                self.version += 1

    async def _discover(self) -> str:
        """The provider's JWKS URL, from its discovery document, which must be the issuer's
        own: it names exactly that issuer (OpenID Connect Discovery §4.3), and an https
        issuer's keys come over https, never from a URL a network attacker could answer."""
        issuer = self._issuer or ""
        address = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
        response = await self._client.get(address)
        response.raise_for_status()
        document = response.json()
        if document.get("issuer") != issuer:
            log.error("OIDC discovery refused: its issuer is not CHAT_OIDC_ISSUER", url=address)
            raise ValueError("the discovery document names another issuer")
        url = document["jwks_uri"]
        schemes = ("https://",) if issuer.startswith("https://") else ("https://", "http://")
        if not isinstance(url, str) or not url.startswith(schemes):
            log.error("OIDC discovery refused: its jwks_uri is not https", url=address)
            raise ValueError("the discovery document names no usable jwks_uri")
        return url

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self._client.aclose()


class TokenVerifier:
    def __init__(self, settings: Settings, jwks_client: httpx.AsyncClient | None = None) -> None:
        self.algorithms = frozenset(settings.jwt_algorithms)
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway
        self.max_bytes = settings.jwt_max_bytes
        self.keys: StaticKeys | JwksKeys
        if settings.jwt_jwks_url or settings.oidc_issuer:
            self.keys = JwksKeys(settings.jwt_jwks_url, jwks_client, issuer=settings.oidc_issuer)
        else:
            material = settings.jwt_secret or settings.jwt_public_key
            if not material:
                raise ValueError("no signing key configured")
            self.keys = StaticKeys(material)
        # token -> (principal, the key set's version it was verified with)
        self._verified: dict[str, tuple[Principal, int]] = {}

    async def verify(self, token: str) -> Principal:
        if len(token) > self.max_bytes:
            raise AuthError("oversized", "token is too large")
        known = self._verified.get(token)
        if known is not None:
            principal, version = known
            if version == self.keys.version:
                self._check_claims(principal.claims)
                if isinstance(self.keys, JwksKeys):
                    self.keys.refresh_if_stale()
                return principal
            del self._verified[token]  # the key set changed: verify it against the new one
        principal = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()  # simpler than LRU, and a refill costs one verify each
        self._verified[token] = (principal, self.keys.version)
        return principal

    async def _verify(self, token: str) -> Principal:
        header_b64, payload_b64, signature = _segments(token)
        header = _json_object(_b64decode(header_b64), "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError("algorithm", "token algorithm is not allowed")
        if not ALLOWED_HEADER_KEYS.issuperset(header):
            raise AuthError("malformed", "token header has unsupported fields")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed", "token key id is not a string")
        if not isinstance(header.get("typ", ""), str):
            raise AuthError("malformed", "token type is not a string")
        key = await self.keys.key_for(alg, kid)
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        try:
            valid = key.verify(signing_input, _b64decode(signature))
        except Exception:  # a key library refusing odd input is a bad signature, not a 500
            valid = False
        if not valid:
            raise AuthError("signature", "token signature is invalid")
        claims = _json_object(_b64decode(payload_b64), "payload")
        self._check_claims(claims)
        return Principal(sub=claims["sub"], claims=claims)

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        now = time.time()
        exp = claims.get("exp")
        if not _is_time(exp):
            raise AuthError("malformed", "token has no valid exp claim")
        if now > exp + self.leeway:
            raise AuthError("expired", "token has expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_time(nbf) or now + self.leeway < nbf):
            raise AuthError("not_yet_valid", "token is not valid yet")
        iat = claims.get("iat")
        if iat is not None and (not _is_time(iat) or now + self.leeway < iat):
            raise AuthError("not_yet_valid", "token was issued in the future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 256 or not _is_text(sub):
            raise AuthError("no_sub", "token has no valid sub claim")
        if self.audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if self.audience not in audiences:
                raise AuthError("audience", "token audience is not accepted")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise AuthError("issuer", "token issuer is not accepted")

    async def aclose(self) -> None:
        await self.keys.aclose()


def _segments(token: str) -> tuple[str, str, str]:
    parts = token.split(".")
    if len(parts) != 3 or not all(SEGMENT.fullmatch(part) for part in parts):
        raise AuthError("malformed", "token is not a JWS compact serialization")
    return parts[0], parts[1], parts[2]


def _b64decode(segment: str) -> bytes:
    """Canonical base64url only: one string per byte sequence (RFC 4648 §3.5, §5)."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise AuthError("malformed", "token is not valid base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise AuthError("malformed", "token is not canonical base64url")
    return raw


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes, part: str) -> dict[str, Any]:
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeError, RecursionError):
        # RecursionError: `[[[[...` nested past the interpreter's limit.
        raise AuthError("malformed", f"token {part} is not valid JSON") from None
    if not isinstance(value, dict):
        raise AuthError("malformed", f"token {part} is not a JSON object")
    return value


def _is_text(value: str) -> bool:
    """Whether `value` is Unicode text: JSON's `\\ud800` escapes decode to lone surrogates,
    which no UTF-8 encoder (a log line, a Redis key's hash) can write."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_time(value: object) -> TypeGuard[float]:
    """A NumericDate (RFC 7519 §2): a finite JSON number in the range a float holds exactly
    (RFC 8259 §6), so that comparing it with the clock can neither overflow nor be NaN."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_SAFE_INTEGER
    return isinstance(value, float) and math.isfinite(value)


def issue_token(
    settings: Settings, sub: str, ttl: int = 3600, extra: Mapping[str, Any] | None = None
) -> str:
    """Sign a token for the configured HS secret (the CLI's `token` and development mode)."""
    if not settings.jwt_secret or not settings.symmetric:
        raise ValueError("issuing tokens needs CHAT_JWT_SECRET with an HS* algorithm")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    claims.update(extra or {})
    return str(jws.sign(claims, settings.jwt_secret, algorithm=settings.jwt_algorithms[0]))
