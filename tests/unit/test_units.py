"""Small pure pieces: SSE encoding, Accept negotiation, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import ConfigError, load_settings
from service.events import Event, encode
from service.routes.pages import wants_html


def test_encode_is_one_event_block_with_compact_utf8_json() -> None:
    assert encode(Event("content", {"text": "你"}), b"7") == (
        'id: 7\nevent: content\ndata: {"text":"你"}\n\n'.encode()
    )


def test_newlines_in_data_stay_on_one_data_line() -> None:
    wire = encode(Event("content", {"text": "a\nb\r\nc"}), b"1")
    assert wire.count(b"\n") == 4  # id, event, data, blank
    assert b'"a\\nb\\r\\nc"' in wire


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("*/*", False),
        ("", False),
        ("text/plain", False),
        ("text/plain, text/html;q=0.5", False),
        ("text/html;q=0", False),
        ("text/html;q=oops", False),
    ],
)
def test_accept_negotiation(accept: str, html: bool) -> None:
    assert wants_html(accept) is html


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("CHAT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_secret_and_secret_file_together_are_refused(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "s"
    secret.write_text("x" * 40)
    env.setenv("CHAT_JWT_SECRET", "y" * 40)
    env.setenv("CHAT_JWT_SECRET_FILE", str(secret))
    with pytest.raises(ConfigError, match="CHAT_JWT_SECRET and CHAT_JWT_SECRET_FILE"):
        load_settings()


def test_a_secret_file_is_read_and_stripped(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("x" * 40 + "\n")
    env.setenv("CHAT_JWT_SECRET_FILE", str(secret))
    assert load_settings().jwt_secret == "x" * 40


def test_a_missing_secret_file_names_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("CHAT_JWT_SECRET_FILE", "/nonexistent/secret")
    with pytest.raises(ConfigError, match="CHAT_JWT_SECRET_FILE"):
        load_settings()


def test_public_key_with_hs_algorithms_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("CHAT_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ConfigError, match="CHAT_JWT_ALGORITHMS"):
        load_settings()


def test_lists_are_comma_separated(env: pytest.MonkeyPatch) -> None:
    env.setenv("CHAT_CORS_ORIGINS", "https://a.example.com, https://b.example.com")
    env.setenv("CHAT_JWT_ALGORITHMS", "rs256,es256")
    env.setenv("CHAT_JWT_PUBLIC_KEY", "pem")
    settings = load_settings()
    assert settings.cors_origins == ["https://a.example.com", "https://b.example.com"]
    assert settings.jwt_algorithms == ["RS256", "ES256"]


def test_history_turns_zero_keeps_no_history() -> None:
    import asyncio

    from service.backends import Turn
    from service.conversations import make_conversations

    async def scenario() -> list[Turn]:
        conversations = make_conversations(None, max_turns=0, ttl=60, max_per_user=10)
        opened = await conversations.open("u", "c", "hi")
        turns = [Turn("user", "hi"), Turn("assistant", "yo")]
        assert await conversations.append("u", "c", opened.epoch, turns)
        return await conversations.history("u", "c")

    assert asyncio.run(scenario()) == []
