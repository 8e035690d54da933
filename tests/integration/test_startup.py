"""Start-up: production refuses unsafe configuration with a clear message; development
makes one key for all workers and logs a token that works."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.support.service import (
    REPO,
    chat_service_command,
    free_port,
    running_service,
    service_env,
)
from tests.support.sse import stream_chat
from tests.support.tokens import make_es256_keys

PUBLIC_KEY = make_es256_keys()[1]


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*chat_service_command(), "serve"],
        env=service_env({"CHAT_ENV": "production", **env}, port=free_port()),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CHAT_JWT_SECRET": ""}, "CHAT_JWT_SECRET"),
        ({"CHAT_JWT_SECRET": "short-secret"}, "CHAT_JWT_SECRET"),
        ({"CHAT_CORS_ORIGINS": "https://a.example.com,*"}, "CHAT_CORS_ORIGINS"),
        ({"CHAT_JWT_ALGORITHMS": "HS256,RS256"}, "CHAT_JWT_ALGORITHMS"),
        ({"CHAT_PORT": "eighty"}, "CHAT_PORT"),
        # An algorithm python-jose cannot verify: it started, then refused every token.
        ({"CHAT_JWT_ALGORITHMS": "PS256"}, "CHAT_JWT_ALGORITHMS"),
        # A shared identity provider's tokens for other applications would be accepted.
        (
            {
                "CHAT_JWT_SECRET": "",
                "CHAT_JWT_ALGORITHMS": "ES256",
                "CHAT_JWT_PUBLIC_KEY": PUBLIC_KEY,
            },
            "CHAT_JWT_AUDIENCE",
        ),
        (
            {
                "CHAT_JWT_SECRET": "",
                "CHAT_JWT_ALGORITHMS": "RS256",
                "CHAT_JWT_JWKS_URL": "https://id.example.com/jwks",
                "CHAT_JWT_AUDIENCE": "chat",
            },
            "CHAT_JWT_ISSUER",
        ),
        # In development as in production: an asymmetric algorithm with nothing to check it.
        (
            {"CHAT_ENV": "development", "CHAT_JWT_SECRET": "", "CHAT_JWT_ALGORITHMS": "RS256"},
            "CHAT_JWT_ALGORITHMS",
        ),
        ({"CHAT_ENV": "development", "CHAT_MAX_CONNECTIONS": "0"}, "CHAT_MAX_CONNECTIONS"),
        ({"CHAT_ENV": "development", "CHAT_IP_RATE_LIMIT": "lots"}, "CHAT_IP_RATE_LIMIT"),
        ({"CHAT_ENV": "development", "CHAT_HEADER_TIMEOUT": "-1"}, "CHAT_HEADER_TIMEOUT"),
        ({"CHAT_ENV": "development", "CHAT_CACHE_SCOPE": "team"}, "CHAT_CACHE_SCOPE"),
        ({"CHAT_ENV": "development", "CHAT_TOKEN_BUDGET": "lots"}, "CHAT_TOKEN_BUDGET"),
        ({"CHAT_ENV": "development", "CHAT_TOKEN_BUDGET": "9/fortnight"}, "CHAT_TOKEN_BUDGET"),
        # A budget that cannot hold one reply's reservation would refuse every request.
        ({"CHAT_ENV": "development", "CHAT_TOKEN_BUDGET": "100/day"}, "CHAT_MAX_OUTPUT_TOKENS"),
        ({"CHAT_ENV": "development", "CHAT_MAX_OUTPUT_TOKENS": "0"}, "CHAT_MAX_OUTPUT_TOKENS"),
        ({"CHAT_ENV": "development", "CHAT_REDIS_URL": "memcached://x:1"}, "CHAT_REDIS_URL"),
        (
            {"CHAT_ENV": "development", "CHAT_REDIS_URL": "redis+sentinel://127.0.0.1:26379"},
            "CHAT_REDIS_URL",
        ),
        (
            {"CHAT_ENV": "development", "CHAT_REDIS_URL": "redis+cluster://127.0.0.1:x"},
            "CHAT_REDIS_URL",
        ),
        (
            {"CHAT_ENV": "development", "CHAT_REDIS_CA_FILE": "/nonexistent/ca.pem"},
            "CHAT_REDIS_CA_FILE",
        ),
        (
            {"CHAT_ENV": "development", "CHAT_OIDC_ISSUER": "https://login.example.com"},
            "CHAT_OIDC_CLIENT_ID",
        ),
        ({"CHAT_ENV": "development", "CHAT_OIDC_CLIENT_ID": "chat-page"}, "CHAT_OIDC_ISSUER"),
        (
            {
                "CHAT_ENV": "development",
                "CHAT_OIDC_ISSUER": "https://login.example.com",
                "CHAT_OIDC_CLIENT_ID": "chat-page",
            },
            "unset CHAT_JWT_SECRET",
        ),
        ({"CHAT_ENV": "development", "CHAT_OIDC_ISSUER": "login.example.com"}, "CHAT_OIDC_ISSUER"),
        # An ID token names the client id as its audience: an API that accepted that
        # audience took every ID token the page was given as an access token.
        (
            {
                "CHAT_JWT_SECRET": "",
                "CHAT_OIDC_ISSUER": "https://login.example.com",
                "CHAT_OIDC_CLIENT_ID": "chat-page",
            },
            "CHAT_JWT_AUDIENCE",
        ),
        (
            {
                "CHAT_JWT_SECRET": "",
                "CHAT_OIDC_ISSUER": "https://login.example.com",
                "CHAT_OIDC_CLIENT_ID": "chat-page",
                "CHAT_JWT_AUDIENCE": "chat-page",
            },
            "CHAT_JWT_AUDIENCE",
        ),
        ({"CHAT_ENV": "development", "CHAT_BODY_TIMEOUT": "0"}, "CHAT_BODY_TIMEOUT"),
        (
            {"CHAT_ENV": "development", "CHAT_MAX_CONNECTIONS_PER_ADDRESS": "0"},
            "CHAT_MAX_CONNECTIONS_PER_ADDRESS",
        ),
        ({"CHAT_ENV": "development", "CHAT_RESUME_RATE_LIMIT": "lots"}, "CHAT_RESUME_RATE_LIMIT"),
        (
            {"CHAT_ENV": "development", "CHAT_MAX_READERS_PER_STREAM": "0"},
            "CHAT_MAX_READERS_PER_STREAM",
        ),
    ],
    ids=[
        "missing-key",
        "short-secret",
        "wildcard-cors",
        "mixed-families",
        "bad-port",
        "unimplemented-algorithm",
        "public-key-without-audience",
        "jwks-without-issuer",
        "asymmetric-without-key",
        "connections-out-of-range",
        "ip-rate-syntax",
        "negative-header-timeout",
        "unknown-cache-scope",
        "token-budget-syntax",
        "token-budget-window",
        "token-budget-below-one-reply",
        "output-tokens-out-of-range",
        "redis-scheme",
        "sentinel-without-service",
        "cluster-bad-port",
        "redis-ca-unreadable",
        "oidc-without-client",
        "oidc-client-without-issuer",
        "oidc-beside-a-secret",
        "oidc-issuer-not-a-url",
        "oidc-production-without-audience",
        "oidc-production-audience-is-the-client-id",
        "body-timeout-zero",
        "connections-per-address-zero",
        "resume-rate-syntax",
        "readers-zero",
    ],
)
def test_production_refuses_to_start(env: dict[str, str], names: str) -> None:
    result = _serve(env)

    assert result.returncode == 2
    lines = [json.loads(line) for line in result.stdout.splitlines() if line]
    refusal = next(line for line in lines if line["level"] == "critical")
    assert names in refusal["error"]
    assert "\n" not in refusal["error"]  # one line
    assert "Traceback" not in result.stdout + result.stderr


def test_secret_from_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 40 + "\n")
    env = {
        "CHAT_ENV": "production",
        "CHAT_JWT_SECRET": "",
        "CHAT_JWT_SECRET_FILE": str(secret_file),
    }
    from tests.support.tokens import make_token

    with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
        token = make_token(secret="s" * 40)
        response = http.get("/chat/hi", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


def test_development_mode_logs_a_working_token_shared_by_all_workers() -> None:
    with running_service({"CHAT_JWT_SECRET": ""}, workers=2) as svc:
        record = next(r for r in svc.records() if "token" in r)
        assert record["url"] == f"http://127.0.0.1:{svc.port}/#token={record['token']}"
        auth = {"Authorization": f"Bearer {record['token']}"}
        workers = sorted(svc.worker_pids())
        assert len(workers) == 2
        statuses = []
        for pid in workers:  # each worker in turn must accept the same token
            with svc.served_by(pid), httpx.Client(base_url=svc.url) as http:
                statuses.append(stream_chat(http, "GET", "/chat/hi", headers=auth).status)
        assert statuses == [200, 200]


def test_token_command_prints_a_token_the_service_accepts() -> None:
    with running_service(workers=1) as svc:
        result = subprocess.run(
            [*chat_service_command(), "token", "--sub", "bob", "--ttl", "60"],
            env=svc.env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = result.stdout.strip()
        with httpx.Client(base_url=svc.url) as http:
            stream = stream_chat(
                http, "GET", "/chat/hi", headers={"Authorization": f"Bearer {token}"}
            )
    assert stream.status == 200
    assert any(r.get("user") == "bob" for r in svc.records())


def test_every_secret_can_come_from_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """CHAT_JWT_PUBLIC_KEY_FILE and CHAT_REDIS_URL_FILE, beside CHAT_JWT_SECRET_FILE above
    and CHAT_OPENAI_API_KEY_FILE in test_openai: each is read, and used."""
    from jose import jwt

    from tests.support.redis import running_redis

    private, public = make_es256_keys()
    key_file = tmp_path / "public.pem"
    key_file.write_text(public)
    with running_redis() as redis:
        url_file = tmp_path / "redis-url"
        url_file.write_text(redis.url + "\n")
        env = {
            "CHAT_JWT_SECRET": "",
            "CHAT_JWT_ALGORITHMS": "ES256",
            "CHAT_JWT_PUBLIC_KEY_FILE": str(key_file),
            "CHAT_REDIS_URL_FILE": str(url_file),
        }
        token = jwt.encode({"sub": "filed", "exp": 2**31}, private, algorithm="ES256")
        with running_service(env, workers=1) as svc, httpx.Client(base_url=svc.url) as http:
            stream = stream_chat(
                http, "GET", "/chat/hi", headers={"Authorization": f"Bearer {token}"}
            )
            ready = http.get("/readyz").status_code
        import redis as sync_redis

        used = sync_redis.Redis.from_url(redis.url).keys("chat:*")
    assert stream.status == 200 and stream.names[-1] == "done"
    assert ready == 200
    assert used  # the rate window and the cache entry went to that Redis


def test_both_a_secret_and_its_file_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 40)
    result = _serve({"CHAT_JWT_SECRET": "t" * 40, "CHAT_JWT_SECRET_FILE": str(secret_file)})
    assert result.returncode == 2
    assert "CHAT_JWT_SECRET_FILE" in result.stdout


def test_development_with_a_provider_and_no_audience_warns_that_id_tokens_pass() -> None:
    env = {
        "CHAT_ENV": "development",
        "CHAT_JWT_SECRET": "",
        # Nothing listens here: start-up does not fetch the keys, the first token does.
        "CHAT_OIDC_ISSUER": f"http://127.0.0.1:{free_port()}",
        "CHAT_OIDC_CLIENT_ID": "chat-page",
    }
    with running_service(env, workers=1) as svc:
        svc.wait_for_records(
            lambda r: r.get("level") == "warning" and "ID tokens" in str(r.get("event"))
        )
