"""Signing in with the organisation's OpenID provider: a real one (`oidc-provider` from npm,
tests/peers/oidc-provider.mjs), whose tokens the service verifies through the keys its
discovery document names, for the page's client id."""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.oidc import (
    API_AUDIENCE,
    OTHER_CLIENT,
    PAGE_CLIENT,
    OidcProvider,
    running_oidc_provider,
    sign_in,
)
from tests.support.redis_topologies import make_ca, make_server_cert
from tests.support.service import Service, free_port, running_service
from tests.support.sse import stream_chat
from tests.support.tokens import bearer

REDIRECT = "http://127.0.0.1:9/signed-in"  # never followed here: the code is read from it


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with running_oidc_provider([REDIRECT], access_token_ttl=2) as made:
        yield made


@pytest.fixture(scope="module")
def svc(provider: OidcProvider) -> Iterator[Service]:
    env = {
        "CHAT_OIDC_ISSUER": provider.issuer,
        "CHAT_OIDC_CLIENT_ID": PAGE_CLIENT,
        "CHAT_JWT_AUDIENCE": API_AUDIENCE,
        "CHAT_JWT_SECRET": "",  # the provider's keys verify, no secret of our own
        "CHAT_JWT_LEEWAY": "0",
        "CHAT_CACHE_TTL": "0",
    }
    with running_service(env, workers=1) as service:
        yield service


def test_the_page_learns_the_provider_and_may_reach_exactly_its_origin(
    svc: Service, provider: OidcProvider
) -> None:
    config = httpx.get(f"{svc.url}/auth/config").json()
    assert config == {
        "oidc": {"issuer": provider.issuer, "client_id": PAGE_CLIENT, "scopes": "openid profile"}
    }
    page = httpx.get(f"{svc.url}/", headers={"Accept": "text/html"})
    policy = page.headers["content-security-policy"]
    assert f"connect-src 'self' {provider.issuer};" in policy
    assert "form-action 'self'" in policy


def test_a_token_the_provider_issued_for_the_page_is_accepted_until_it_expires(
    svc: Service, provider: OidcProvider
) -> None:
    tokens = sign_in(provider.issuer, PAGE_CLIENT, REDIRECT, "alice")
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        stream = stream_chat(
            http, "POST", "/chat", json={"message": "hi", "conversation_id": "mine"},
            headers=bearer(tokens["access_token"]),
        )  # fmt: skip
        assert stream.status == 200 and stream.names[-1] == "done"
        listed = http.get("/conversations", headers=bearer(tokens["access_token"])).json()
        assert [c["id"] for c in listed["conversations"]] == ["mine"]
        time.sleep(2.2)  # the token's own lifetime (2 s, no leeway) is what is under test
        expired = http.get("/conversations", headers=bearer(tokens["access_token"]))
    assert expired.status_code == 401
    assert expired.headers["www-authenticate"].startswith("Bearer")
    access = [r for r in svc.records() if r.get("event") == "stream finished"]
    assert access[-1]["user"] == "alice"


def test_a_token_for_another_application_is_refused(svc: Service, provider: OidcProvider) -> None:
    tokens = sign_in(provider.issuer, OTHER_CLIENT, REDIRECT, "alice")
    response = httpx.get(f"{svc.url}/conversations", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401
    assert "audience" in response.json()["detail"]


def test_without_a_provider_the_page_asks_for_a_token() -> None:
    with running_service({}, workers=1) as plain:
        assert httpx.get(f"{plain.url}/auth/config").json() == {"oidc": None}
        page = httpx.get(f"{plain.url}/", headers={"Accept": "text/html"})
        assert "connect-src 'self';" in page.headers["content-security-policy"]


def test_an_id_token_is_not_an_access_token(svc: Service, provider: OidcProvider) -> None:
    """An ID token is signed by the same keys, by the same issuer, and names the page's
    client id as its audience. Before, the service took the client id as its audience by
    default, so every ID token the page was given passed as an API token."""
    tokens = sign_in(provider.issuer, PAGE_CLIENT, REDIRECT, "alice")
    with httpx.Client(base_url=svc.url, timeout=30) as http:
        refused = http.get("/conversations", headers=bearer(tokens["id_token"]))
        accepted = http.get("/conversations", headers=bearer(tokens["access_token"]))
    assert refused.status_code == 401
    assert "audience" in refused.json()["detail"]
    assert accepted.status_code == 200


def test_a_discovery_document_naming_another_issuer_is_refused(provider: OidcProvider) -> None:
    """The document the service reads at `localhost:<port>` is the provider's, which names
    its issuer `127.0.0.1:<port>`: not the configured issuer (OpenID Connect Discovery §4.3),
    so its keys are never trusted. Before, the `issuer` was not compared at all."""
    elsewhere = provider.issuer.replace("127.0.0.1", "localhost")
    env = {
        "CHAT_OIDC_ISSUER": elsewhere,
        "CHAT_OIDC_CLIENT_ID": PAGE_CLIENT,
        "CHAT_JWT_AUDIENCE": API_AUDIENCE,
        "CHAT_JWT_ISSUER": provider.issuer,  # the tokens' own `iss`: only discovery differs
        "CHAT_JWT_SECRET": "",
    }
    tokens = sign_in(provider.issuer, PAGE_CLIENT, REDIRECT, "alice")
    with running_service(env, workers=1) as service:
        response = httpx.get(f"{service.url}/conversations", headers=bearer(tokens["access_token"]))
        assert response.status_code == 503
        service.wait_for_event("OIDC discovery refused: its issuer is not CHAT_OIDC_ISSUER")
    assert not [r for r in service.records() if r.get("exception")]


@contextmanager
def https_discovery(jwks_uri: str) -> Iterator[tuple[str, Path]]:
    """An https issuer whose discovery document names `jwks_uri`: what a provider with a
    careless configuration (or anyone who can edit that document) serves. Yields the
    issuer and the CA that signed its certificate."""
    directory = Path(tempfile.mkdtemp(prefix="chat-oidc-tls-"))
    ca = make_ca(directory, "oidc-ca")
    cert, key = make_server_cert(directory, ca)
    port = free_port()
    issuer = f"https://127.0.0.1:{port}"
    document = json.dumps({"issuer": issuer, "jwks_uri": jwks_uri}).encode()

    class Discovery(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Discovery)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer, ca[0]
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)


def test_an_https_issuer_whose_keys_are_named_over_http_is_refused(
    provider: OidcProvider,
) -> None:
    """An https issuer's discovery document naming an `http://` jwks_uri (here, the real
    provider's own keys over plain HTTP) would let anyone on the path swap the keys that
    decide who is signed in. Before, that URL was fetched and its keys trusted."""
    with https_discovery(f"{provider.issuer}/jwks") as (issuer, ca):
        env = {
            "CHAT_OIDC_ISSUER": issuer,
            "CHAT_OIDC_CLIENT_ID": PAGE_CLIENT,
            "CHAT_JWT_AUDIENCE": API_AUDIENCE,
            "CHAT_JWT_ISSUER": provider.issuer,
            "CHAT_JWT_SECRET": "",
            "SSL_CERT_FILE": str(ca),  # httpx trusts the test's CA, as an operator would
        }
        tokens = sign_in(provider.issuer, PAGE_CLIENT, REDIRECT, "alice")
        with running_service(env, workers=1) as service:
            headers = bearer(tokens["access_token"])
            response = httpx.get(f"{service.url}/conversations", headers=headers)
            assert response.status_code == 503
            service.wait_for_event("OIDC discovery refused: its jwks_uri is not https")
