"""A real OpenID provider for the tests (`oidc-provider` from npm, tests/peers/oidc-provider.mjs),
and a sign-in through it the way a browser does it: Authorization Code with PKCE, its own
login and consent pages filled in, the code exchanged for tokens."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from .service import REPO, free_port

PEERS = REPO / "tests" / "peers"
PAGE_CLIENT = "chat-page"
OTHER_CLIENT = "other-app"
# The API's audience: the resource the page's access tokens are issued for (RFC 8707).
API_AUDIENCE = "urn:chat-service"


@dataclass
class OidcProvider:
    issuer: str
    proc: subprocess.Popen[str]


@contextmanager
def running_oidc_provider(
    redirect_uris: Sequence[str], access_token_ttl: int = 3600
) -> Iterator[OidcProvider]:
    node = shutil.which("node")
    assert node, "scripts/test.sh installs Node.js"
    port = free_port()
    proc = subprocess.Popen(
        [node, str(PEERS / "oidc-provider.mjs"), str(port), *redirect_uris],
        cwd=PEERS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ACCESS_TOKEN_TTL": str(access_token_ttl)},
    )
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("READY "):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(20) or proc.poll() is not None:
            raise RuntimeError("oidc-provider did not start:\n" + "".join(lines[-20:]))
        yield OidcProvider(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def sign_in(
    issuer: str, client_id: str, redirect_uri: str, login: str, scope: str = "openid profile"
) -> dict[str, Any]:
    """Authorization Code + PKCE through the provider's own pages, as a browser would
    follow them; the token response (access_token, id_token, ...)."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    state = secrets.token_urlsafe(16)
    with httpx.Client(timeout=10) as http:
        config = http.get(f"{issuer}/.well-known/openid-configuration").json()
        params = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        response = http.get(config["authorization_endpoint"], params=params)
        for _ in range(10):  # the login page, then the consent page, then back to us
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if location.startswith(redirect_uri):
                    break
                response = http.get(location)
                continue
            action = re.search(r'<form[^>]*action="([^"]+)"', response.text)
            assert action, response.text[:500]
            fields = dict(
                re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', response.text)
            )
            if 'name="login"' in response.text:
                fields.update(login=login, password="any")
            response = http.post(urljoin(str(response.url), action.group(1)), data=fields)
        else:
            raise AssertionError("the provider never sent the browser back")
        query = parse_qs(urlsplit(location).query)
        assert query["state"] == [state]
        tokens = http.post(
            config["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": redirect_uri,
                "client_id": client_id,
                "code_verifier": verifier,
            },
        )
        assert tokens.status_code == 200, tokens.text
        result: dict[str, Any] = tokens.json()
        return result
