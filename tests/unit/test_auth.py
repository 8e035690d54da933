"""TokenVerifier without HTTP: the checks python-jose would let through, and JWKS caching."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jwt

from service.auth import AuthError, JwksKeys, KeysUnavailable, TokenVerifier, issue_token
from service.config import Settings
from tests.support.tokens import SECRET, make_token


def verify(token: str, **settings: Any) -> Any:
    verifier = TokenVerifier(Settings(jwt_secret=SECRET, **settings))
    return asyncio.run(verifier.verify(token))


def reason(token: str, **settings: Any) -> str:
    with pytest.raises(AuthError) as caught:
        verify(token, **settings)
    return caught.value.reason


def test_a_good_token_gives_its_sub() -> None:
    assert verify(make_token(sub="carol")).sub == "carol"


def test_each_refusal_has_its_reason() -> None:
    now = int(time.time())
    assert reason(make_token(ttl=-60)) == "expired"
    assert reason(make_token(nbf=now + 120)) == "not_yet_valid"
    assert reason(make_token(iat=now + 120)) == "not_yet_valid"
    assert reason(make_token(sub=None)) == "no_sub"
    assert reason(make_token(sub=123)) == "no_sub"  # type: ignore[arg-type]
    assert reason(jwt.encode({"sub": "a"}, SECRET)) == "malformed"  # no exp
    assert reason(make_token(exp="tomorrow")) == "malformed"
    assert reason(make_token(secret="x" * 40)) == "signature"
    assert reason(make_token(algorithm="HS384")) == "algorithm"
    assert reason(make_token(headers={"crit": ["b64"]})) == "malformed"
    assert reason(make_token(headers={"jku": "https://evil.example.com/keys"})) == "malformed"
    assert reason("a.b") == "malformed"
    assert reason("%%%.e30.sig") == "malformed"
    assert reason(make_token(pad="x" * 10_000)) == "oversized"
    # Regression: an unhashable `alg` made the allow-list check raise (a 500, not a 401).
    assert reason(_with_header(make_token(), {"alg": ["HS256"], "typ": "JWT"})) == "algorithm"
    assert reason(_with_header(make_token(), {"alg": {"x": 1}})) == "algorithm"


def test_leeway_is_applied_to_exp() -> None:
    assert verify(make_token(ttl=-5), jwt_leeway=10).sub == "alice"
    assert reason(make_token(ttl=-5), jwt_leeway=0) == "expired"


def test_audience_and_issuer_are_required_when_configured() -> None:
    settings = {"jwt_audience": "chat", "jwt_issuer": "https://id.example.com"}
    good = make_token(aud=["other", "chat"], iss="https://id.example.com")
    assert verify(good, **settings).sub == "alice"
    assert reason(make_token(iss="https://id.example.com"), **settings) == "audience"
    assert reason(make_token(aud="chat"), **settings) == "issuer"


def test_leeway_above_thirty_seconds_is_refused_by_config() -> None:
    with pytest.raises(ValueError):
        Settings(jwt_secret=SECRET, jwt_leeway=31)


def test_issued_tokens_carry_audience_and_issuer() -> None:
    settings = Settings(jwt_secret=SECRET, jwt_audience="chat", jwt_issuer="me")
    claims = jwt.get_unverified_claims(issue_token(settings, "dave", ttl=60))
    assert claims["aud"] == "chat" and claims["iss"] == "me" and claims["sub"] == "dave"
    assert asyncio.run(TokenVerifier(settings).verify(issue_token(settings, "dave"))).sub == "dave"


# --- JWKS, served by a real local HTTP server ---------------------------------------------


class Provider:
    """A tiny OpenID provider: publishes `keys` at /jwks and counts fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                body = json.dumps({"keys": [k["public"] for k in provider.keys.values()]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks"

    def add_key(self, kid: str) -> None:
        private = ec.generate_private_key(ec.SECP256R1())
        public = jwk.construct(private.public_key(), "ES256").to_dict()
        public.update(kid=kid, use="sig")
        self.keys[kid] = {"private": private, "public": public}

    def token(self, kid: str, sub: str = "erin") -> str:
        claims = {"sub": sub, "exp": int(time.time()) + 60}
        key = self.keys[kid]["private"]
        return jwt.encode(claims, jwk.construct(key, "ES256").to_dict(), "ES256", {"kid": kid})


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    thread = threading.Thread(target=p.server.serve_forever, daemon=True)
    thread.start()
    yield p
    p.server.shutdown()


def test_jwks_keys_are_picked_by_kid_cached_and_refetched_for_new_kids(
    provider: Provider,
) -> None:
    provider.add_key("one")

    async def scenario() -> None:
        verifier = TokenVerifier(
            Settings(jwt_jwks_url=provider.url, jwt_algorithms=["ES256"])  # type: ignore[arg-type]
        )
        assert (await verifier.verify(provider.token("one"))).sub == "erin"
        assert (await verifier.verify(provider.token("one"))).sub == "erin"
        assert provider.fetches == 1  # cached

        provider.add_key("two")  # key rotation: an unknown kid refetches once
        verifier.keys._fetched_at -= 60  # type: ignore[union-attr]  # as if 60 s had passed
        verifier.keys._loaded_at -= 60  # type: ignore[union-attr]
        # A minute on, a known kid still fetches nothing: what fetches is the unknown kid.
        assert (await verifier.verify(provider.token("one", sub="fresh"))).sub == "fresh"
        assert verifier.keys._refreshing is None  # type: ignore[union-attr]  # none begun
        assert provider.fetches == 1
        assert (await verifier.verify(provider.token("two"))).sub == "erin"
        assert provider.fetches == 2

        # Forged kids cannot make us hammer the provider: one refetch per 30 s at most.
        verifier.keys._fetched_at -= 60  # type: ignore[union-attr]
        for kid in ("forged", "forged-again", "and-again"):
            with pytest.raises(AuthError) as caught:
                await verifier.verify(_with_kid(provider.token("two"), kid))
            assert caught.value.reason == "unknown_key"
        assert provider.fetches == 3
        await verifier.aclose()

    asyncio.run(scenario())


def _jwks_verifier(provider: Provider) -> tuple[TokenVerifier, JwksKeys]:
    settings = Settings(jwt_jwks_url=provider.url, jwt_algorithms=["ES256"])  # type: ignore[arg-type]
    verifier = TokenVerifier(settings)
    assert isinstance(verifier.keys, JwksKeys)
    return verifier, verifier.keys


def test_a_key_removed_from_the_jwks_stops_verifying_tokens_it_signed(
    provider: Provider,
) -> None:
    """Keys older than their max age are refreshed in the background; a key that is gone
    from the new set no longer verifies, not even a token it signed that was verified
    (and remembered) before. Without the age-based refresh the old key stayed trusted
    until some token named an unknown kid."""
    provider.add_key("old")
    provider.add_key("new")

    async def scenario() -> None:
        verifier, keys = _jwks_verifier(provider)
        old_token = provider.token("old")
        assert (await verifier.verify(old_token)).sub == "erin"
        assert provider.fetches == 1

        del provider.keys["old"]  # the provider rotates the old key out
        assert (await verifier.verify(old_token)).sub == "erin"  # still fresh: no refetch
        assert provider.fetches == 1

        keys._loaded_at -= keys.max_age + 1  # as if max_age had passed
        assert (await verifier.verify(old_token)).sub == "erin"  # answered from the cache...
        assert keys._refreshing is not None
        await keys._refreshing  # ...while the refresh runs in the background
        assert provider.fetches == 2
        with pytest.raises(AuthError) as caught:
            await verifier.verify(old_token)
        assert caught.value.reason == "unknown_key"
        assert (await verifier.verify(provider.token("new"))).sub == "erin"
        await verifier.aclose()

    asyncio.run(scenario())


def test_an_unchanged_jwks_keeps_the_verified_tokens(provider: Provider) -> None:
    provider.add_key("one")

    async def scenario() -> None:
        verifier, keys = _jwks_verifier(provider)
        token = provider.token("one")
        await verifier.verify(token)
        version = keys.version
        keys._loaded_at -= keys.max_age + 1
        await verifier.verify(token)
        assert keys._refreshing is not None
        await keys._refreshing
        assert provider.fetches == 2 and keys.version == version
        await verifier.aclose()

    asyncio.run(scenario())


def test_an_unreachable_jwks_is_unavailable_not_unauthorized() -> None:
    async def scenario() -> None:
        settings = Settings(jwt_jwks_url="http://127.0.0.1:9/jwks", jwt_algorithms=["RS256"])  # type: ignore[arg-type]
        verifier = TokenVerifier(settings)
        token = _with_header(make_token(), {"alg": "RS256", "typ": "JWT", "kid": "k"})
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token)
        # Still 503 (not a 401 for an "unknown key") while the refetch pause lasts.
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token)
        await verifier.aclose()

    asyncio.run(scenario())


def _with_header(token: str, header: dict[str, Any]) -> str:
    import base64

    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return ".".join([encoded, *token.split(".")[1:]])


def _with_kid(token: str, kid: str) -> str:
    header = jwt.get_unverified_header(token)
    header["kid"] = kid
    return _with_header(token, header)
