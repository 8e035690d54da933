"""The wire codec (service/events.py): what it writes, it reads back, block by block."""

from __future__ import annotations

import pytest

from service import events
from service.events import Event


def test_an_event_is_one_block_with_its_id_name_and_compact_json() -> None:
    wire = events.encode(Event("content", {"text": "你好\n"}), b"abc:7")
    assert wire == 'id: abc:7\nevent: content\ndata: {"text":"你好\\n"}\n\n'.encode()


def test_what_is_written_is_read_back() -> None:
    written = [
        Event("start", {"message": "connected", "stream": "abc"}),
        Event("thinking", {"step": "…"}),
        Event("content", {"text": "a\r\nb"}),
        Event("done", {"reason": "complete", "usage": {"total_tokens": 3}}),
    ]
    blob = b"".join(events.encode(e, b"s:%d" % n) for n, e in enumerate(written, 1))
    blocks = events.blocks(blob)
    assert [events.name_of(b) for b in blocks] == ["start", "thinking", "content", "done"]
    assert [events.decode(b) for b in blocks] == written
    assert b"".join(blocks) == blob


def test_a_lone_surrogate_is_written_ascii_escaped_and_read_back_the_same() -> None:
    event = Event("content", {"text": "a\ud800b"})
    wire = events.encode(event, b"s:1")
    assert b"\\ud800" in wire and wire.isascii()
    assert events.decode(wire) == event
    assert events.encode(events.decode(wire), b"s:1") == wire


def test_without_id_keeps_the_event_for_an_id_of_its_own() -> None:
    wire = events.encode(Event("done", {"reason": "stop"}), b"s:9")
    bare = events.without_id(wire)
    assert bare == b'event: done\ndata: {"reason":"stop"}\n\n'
    assert events.decode(bare) == events.decode(wire)
    assert events.without_id(bare) == bare


@pytest.mark.parametrize(
    "block", [b"data: {}\n\n", b"event: content\ndata: [1]\n\n", b"event: x\ndata: {\n\n", b""]
)
def test_what_is_not_an_encoded_event_is_a_value_error(block: bytes) -> None:
    with pytest.raises(ValueError):
        events.decode(block)


def test_the_outcome_follows_from_the_last_event() -> None:
    assert events.outcome_of("done") == "done"
    assert events.outcome_of("error") == "error"
    assert events.outcome_of(None) == "error"
    assert {"done", "error"} == events.TERMINAL
