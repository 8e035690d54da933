"""Malformed bearer tokens of every shape we could think of, against the real service.

Each must be a 401 with an RFC 6750 challenge, counted in `chat_auth_failures_total`, and
never a 500, a traceback in the log, or the token text in the log. Before this suite, a
header of a thousand `[` answered 500, a valid token with `!!!!` appended was accepted, and
`"exp": NaN` never expired.

Tokens whose flaw sits in the claims are signed with the service's real secret by hand
(`_signed`), so that they get past the signature and test what comes after it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.service import Service, running_service
from tests.support.tokens import SECRET, make_token

# Made at collection, used minutes later in a long run: far from expiry either way.
LIFETIME = 24 * 3600


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


HS256 = _b64(_json({"alg": "HS256", "typ": "JWT"}))


def _signed(payload: bytes, header: str = HS256) -> str:
    """Any payload bytes, HS256-signed with the service's own secret."""
    signing_input = f"{header}.{_b64(payload)}".encode()
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{_b64(signature)}"


def _with_header(header: bytes) -> str:
    """A real token's payload and signature under another header."""
    return ".".join([_b64(header), *make_token().split(".")[1:]])


def _claims(**overrides: object) -> bytes:
    claims: dict[str, object] = {"sub": "mallory", "exp": int(time.time()) + LIFETIME}
    claims.update(overrides)
    return _json({k: v for k, v in claims.items() if v is not None})


def _flip_last_bits(segment: str) -> str:
    """The same bytes written with different unused low bits in the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(segment[-1])
    return segment[:-1] + alphabet[last ^ 1]


VALID = make_token(sub="mallory", ttl=LIFETIME)
HEADER, PAYLOAD, SIGNATURE = VALID.split(".")
EXP = str(int(time.time()) + LIFETIME).encode()
ALG_NONE = _b64(b'{"alg":"none"}')

SHAPES: dict[str, str] = {
    # --- the compact serialization itself
    "one segment": "abc",
    "two segments": f"{HEADER}.{PAYLOAD}",
    "four segments": f"{VALID}.{SIGNATURE}",
    "empty segments": "..",
    "empty signature": f"{HEADER}.{PAYLOAD}.",
    "valid token with !!!! appended": VALID + "!!!!",
    "valid token with ~~~~ appended": VALID + "~~~~",
    "valid token with padding": VALID + "==",
    "signature with stray low bits": f"{HEADER}.{PAYLOAD}.{_flip_last_bits(SIGNATURE)}",
    "standard base64 alphabet": VALID.replace("-", "+").replace("_", "/") + "+/",
    "impossible base64 length": f"{HEADER}.{PAYLOAD}.{SIGNATURE}A",
    "space inside": f"{HEADER}.{PAYLOAD[:5]} {PAYLOAD[5:]}.{SIGNATURE}",
    "non-ASCII inside": f"{HEADER}.{PAYLOAD}.{SIGNATURE}é",
    "percent-encoded": f"{HEADER}%2E{PAYLOAD}.{SIGNATURE}",
    "oversized": VALID + "." + "A" * 20_000,
    # --- the header
    "header: a thousand [": _with_header(b"[" * 1000),
    "header: five thousand [": _with_header(b"[" * 5000),
    "header: deep objects": _with_header(b'{"a":' * 1500 + b"1" + b"}" * 1500),
    "header: a JSON array": _with_header(b"[]"),
    "header: a JSON string": _with_header(b'"HS256"'),
    "header: a JSON number": _with_header(b"1e999"),
    "header: null": _with_header(b"null"),
    "header: not UTF-8": _with_header(b"\xff\xfe\xfd"),
    "header: not JSON": _with_header(b"alg=HS256"),
    "header: NaN inside": _with_header(b'{"alg":"HS256","typ":NaN}'),
    "header: no alg": _with_header(b'{"typ":"JWT"}'),
    "header: alg a number": _with_header(b'{"alg":256}'),
    "header: alg null": _with_header(b'{"alg":null}'),
    "header: alg a list": _with_header(b'{"alg":["HS256"]}'),
    "header: alg an object": _with_header(b'{"alg":{"HS256":true}}'),
    "header: alg none": f"{ALG_NONE}.{PAYLOAD}.",
    "header: alg outside the allow-list": make_token(sub="mallory", algorithm="HS512"),
    "header: RS256 in an HS deployment": _with_header(b'{"alg":"RS256"}'),
    "header: kid a number": _with_header(b'{"alg":"HS256","kid":7}'),
    "header: kid an object": _with_header(b'{"alg":"HS256","kid":{"a":1}}'),
    "header: typ a list": _with_header(b'{"alg":"HS256","typ":["JWT"]}'),
    "header: crit": _with_header(b'{"alg":"HS256","crit":["exp"]}'),
    "header: jku": _with_header(b'{"alg":"HS256","jku":"https://evil.example/keys"}'),
    # --- the claims, correctly signed
    "claims: a JSON array": _signed(b"[]"),
    "claims: a JSON string": _signed(b'"mallory"'),
    "claims: null": _signed(b"null"),
    "claims: not JSON": _signed(b"sub=mallory"),
    "claims: not UTF-8": _signed(b"\xff\xfe\xfd"),
    "claims: nested past the limit": _signed(b"[" * 5000),
    "claims: exp NaN": _signed(b'{"sub":"mallory","exp":NaN}'),
    "claims: exp Infinity": _signed(b'{"sub":"mallory","exp":Infinity}'),
    "claims: exp -Infinity": _signed(b'{"sub":"mallory","exp":-Infinity}'),
    "claims: exp 1e400": _signed(b'{"sub":"mallory","exp":1e400}'),
    "claims: exp a 400-digit integer": _signed(b'{"sub":"mallory","exp":1' + b"0" * 400 + b"}"),
    "claims: exp a string": _signed(_claims(exp=EXP.decode())),
    "claims: exp true": _signed(_claims(exp=True)),
    "claims: exp an object": _signed(_claims(exp={"at": 1})),
    "claims: no exp": _signed(_json({"sub": "mallory"})),
    "claims: nbf NaN": _signed(b'{"sub":"mallory","exp":' + EXP + b',"nbf":NaN}'),
    "claims: iat a list": _signed(_claims(iat=[1])),
    "claims: sub a number": _signed(_claims(sub=42)),
    "claims: sub empty": _signed(_claims(sub="")),
    "claims: sub a list": _signed(_claims(sub=["mallory"])),
    "claims: sub too long": _signed(_claims(sub="m" * 300)),
    "claims: no sub": _signed(_json({"exp": int(time.time()) + LIFETIME})),
    # JSON's escapes decode to lone surrogates, which no UTF-8 encoder can write: before, a
    # 500 from the Redis key's hash and the access line (which was lost).
    "claims: sub a lone surrogate": _signed(b'{"sub":"\\ud800","exp":' + EXP + b"}"),
    "claims: sub with a lone low surrogate": _signed(b'{"sub":"a\\udfffb","exp":' + EXP + b"}"),
}

LONE_SURROGATE = SHAPES["claims: sub a lone surrogate"]


@pytest.fixture(scope="module")
def hostile_service() -> Iterator[Service]:
    # The per-address limit on failed authentications is tested on its own; here it must not
    # turn the later shapes into 429s.
    with running_service({"CHAT_IP_RATE_LIMIT": "100000/minute"}, workers=1) as svc:
        yield svc


def test_there_are_at_least_thirty_shapes() -> None:
    assert len(SHAPES) >= 30
    assert len(set(SHAPES.values())) == len(SHAPES)  # no two cases are the same token


def test_the_reference_token_is_accepted(hostile_service: Service) -> None:
    """The shapes are mutations of a token the service accepts: the refusals are theirs."""
    with httpx.Client(base_url=hostile_service.url) as http:
        response = http.get("/conversations/x", headers={"Authorization": f"Bearer {VALID}"})
    assert response.status_code == 404  # authenticated; the conversation does not exist


@pytest.mark.parametrize("token", SHAPES.values(), ids=SHAPES.keys())
def test_each_malformed_token_is_a_401(hostile_service: Service, token: str) -> None:
    with httpx.Client(base_url=hostile_service.url) as http:
        for method, path, body in (("GET", "/chat/hi", None), ("POST", "/chat", {"message": "hi"})):
            # Bytes: a header value may carry any octet; httpx would refuse a non-ASCII str.
            authorization = f"Bearer {token}".encode()
            response = http.request(
                method, path, json=body, headers={"Authorization": authorization}
            )
            assert response.status_code == 401, (method, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/json"
            assert isinstance(response.json()["detail"], str)


def test_a_lone_surrogate_sub_is_a_401_on_every_route_and_logged(hostile_service: Service) -> None:
    headers = {"Authorization": f"Bearer {LONE_SURROGATE}"}
    requests = (
        ("GET", "/conversations", None),
        ("GET", "/usage", None),
        ("POST", "/chat", {"message": "hi", "conversation_id": "mine"}),
    )
    with httpx.Client(base_url=hostile_service.url) as http:
        for method, path, body in requests:
            response = http.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert "sub" in response.json()["detail"]
    for method, path, _ in requests:
        hostile_service.wait_for_records(
            lambda r, m=method, p=path: (
                r.get("method") == m and r.get("route") == p and r.get("status") == 401
            )
        )


def test_refusals_are_counted_and_nothing_leaks_to_the_log(hostile_service: Service) -> None:
    """Runs after the shapes: every one of them was counted, none logged an error, a
    traceback or any part of a token."""
    counted = sum(
        metric(hostile_service.url, "chat_auth_failures_total", f'{{reason="{reason}"}}')
        for reason in (
            "malformed",
            "algorithm",
            "signature",
            "oversized",
            "no_sub",
            "not_yet_valid",
        )
    )
    assert counted >= 2 * len(SHAPES)
    records = hostile_service.records()
    assert not [r for r in records if r.get("level") in ("error", "critical")]
    assert not [r for r in records if "exception" in r or "traceback" in json.dumps(r).lower()]
    log = "\n".join(hostile_service.lines)
    for token in (VALID, *SHAPES.values()):
        for part in token.split("."):
            if len(part) >= 24:
                assert part not in log
