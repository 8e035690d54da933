"""Every way a bearer token is refused gets 401 with an RFC 6750 challenge."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from tests.support.service import running_service
from tests.support.sse import stream_chat
from tests.support.tokens import SECRET, make_token


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unsigned(claims: dict[str, object]) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["detail"], str)


NOW = int(time.time())
CASES = {
    "missing": None,
    "not bearer": "Basic YWxpY2U6c2VjcmV0",
    "malformed": "Bearer not-a-jwt",
    "empty bearer": "Bearer",
    "expired": f"Bearer {make_token(ttl=-120)}",
    "not yet valid": f"Bearer {make_token(nbf=NOW + 600)}",
    "no sub": f"Bearer {make_token(sub=None)}",
    "empty sub": f"Bearer {make_token(sub='')}",
    "no exp": "Bearer " + jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
    "bad signature": f"Bearer {make_token(secret='another-secret-0123456789-abcdefghij')}",
    "alg none": "Bearer " + _unsigned({"sub": "alice", "exp": NOW + 300}),
    "alg outside allow-list": f"Bearer {make_token(algorithm='HS512')}",
    "crit header": f"Bearer {make_token(headers={'crit': ['exp'], 'x': 1})}",
    # Over the 8 KiB token bound, under the 64 KiB head bound (past that: 431).
    "oversized": f"Bearer {make_token(pad='x' * 20_000)}",
}


@pytest.mark.parametrize("authorization", CASES.values(), ids=CASES.keys())
def test_refused_tokens_get_401(client: httpx.Client, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    _assert_refused(client.get("/chat/hi", headers=headers))
    _assert_refused(client.post("/chat", json={"message": "hi"}, headers=headers))


def test_missing_token_challenge_names_no_error(client: httpx.Client) -> None:
    response = client.get("/chat/hi")

    assert response.headers["www-authenticate"] == 'Bearer realm="chat-service"'


def test_invalid_token_challenge_says_invalid_token(client: httpx.Client) -> None:
    response = client.get("/chat/hi", headers={"Authorization": f"Bearer {make_token(ttl=-60)}"})

    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_auth_failures_are_counted_by_reason(client: httpx.Client) -> None:
    client.get("/chat/hi", headers={"Authorization": f"Bearer {make_token(ttl=-60)}"})

    assert 'chat_auth_failures_total{reason="expired"}' in client.get("/metrics").text


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_rs256_deployment_with_audience_and_issuer(rsa_keys: tuple[str, str]) -> None:
    private, public = rsa_keys
    env = {
        "CHAT_JWT_SECRET": "",
        "CHAT_JWT_PUBLIC_KEY": public,
        "CHAT_JWT_ALGORITHMS": "RS256",
        "CHAT_JWT_AUDIENCE": "chat-api",
        "CHAT_JWT_ISSUER": "https://issuer.example.com",
    }

    def token(**claims: object) -> str:
        body = {"sub": "alice", "exp": int(time.time()) + 300}
        body.update({"aud": "chat-api", "iss": "https://issuer.example.com"})
        body.update(claims)
        return jwt.encode(body, private, algorithm="RS256")

    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
        good = stream_chat(http, "GET", "/chat/hi", headers={"Authorization": f"Bearer {token()}"})
        assert good.status == 200 and good.names[-1] == "done"

        refused = {
            "wrong audience": token(aud="someone-else"),
            "no audience": token(aud=None),
            "wrong issuer": token(iss="https://evil.example.com"),
            # The public key used as an HMAC secret: the algorithm-confusion attack.
            "HS256 with the public key": _hs256_with_key(public),
            "HS256 with the shared test secret": make_token(aud="chat-api"),
        }
        for name, bad in refused.items():
            response = http.get("/chat/hi", headers={"Authorization": f"Bearer {bad}"})
            assert response.status_code == 401, name
            assert response.headers["www-authenticate"].startswith("Bearer"), name


def _hs256_with_key(public_pem: str) -> str:
    """Sign HS256 with the PEM text as the secret, by hand: jose refuses to do it for us."""
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64(
        {
            "sub": "alice",
            "exp": int(time.time()) + 300,
            "aud": "chat-api",
            "iss": "https://issuer.example.com",
        }
    )
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_an_unreachable_jwks_is_503_not_401() -> None:
    """The provider being away is not the token's fault: 503, so clients retry rather than
    sign their users out."""
    env = {
        "CHAT_JWT_SECRET": "",
        "CHAT_JWT_ALGORITHMS": "RS256",
        "CHAT_JWT_JWKS_URL": "http://127.0.0.1:9/jwks",
    }
    token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, "k" * 40, algorithm="HS256")
    header = _b64({"alg": "RS256", "typ": "JWT", "kid": "k1"})
    token = ".".join([header, *token.split(".")[1:]])
    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
        response = http.get("/chat/hi", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert "unavailable" in response.json()["detail"]
