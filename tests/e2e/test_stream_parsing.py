"""static/sse.js, run in the browser: events come out whole however the network cuts the body.

page.route() can only answer with a whole body, so splits are tested where they happen: by
feeding the page's own parser Uint8Array chunks cut mid-event, mid-line, between CR and LF,
and mid-character. The last test drives the same formats through the page end to end.
"""

from __future__ import annotations

import json
from typing import Any

from playwright.sync_api import Route, expect

from .chat_page import ChatPage
from .conftest import OpenChat

# Every rule of the SSE format the page relies on, in one body: CRLF, LF and bare-CR line
# ends, comments (the service's ": ping"), an empty event, multi-line data, a field without
# a space after the colon, an id that persists to later events, retry, multi-byte UTF-8
# (3-byte Chinese, a 4-byte emoji), and an unfinished event at the end.
STREAM = (
    ": ping\r\n"
    "\r\n"
    'id: 1\r\nevent: start\r\ndata: {"message":"connected"}\r\n\r\n'
    'id: 2\nevent: content\ndata: {"text":"你好，世界 🎉"}\n\n'
    "event: content\rdata:no-space\rdata:  two spaces\r\r"
    "data: line one\ndata: line two\n\n"
    ": still here\n"
    'id: 3\nevent: done\ndata: {"reason":"complete"}\nretry: 1500\n\n'
    "data: never finished"
).encode()

EXPECTED = [
    {"event": "start", "data": '{"message":"connected"}', "id": "1"},
    {"event": "content", "data": '{"text":"你好，世界 🎉"}', "id": "2"},
    {"event": "content", "data": "no-space\n two spaces", "id": "2"},
    {"event": "message", "data": "line one\nline two", "id": "2"},
    {"event": "done", "data": '{"reason":"complete"}', "id": "3"},
]

# Runs in the page: import the page's parser and feed it chunks of the body.
PARSE = """
async ({ chunks }) => {
  const { SSEParser } = await import(new URL("static/sse.js", document.baseURI));
  const comments = [];
  const parser = new SSEParser({ onComment: (text) => comments.push(text) });
  const events = [];
  for (const chunk of chunks) events.push(...parser.push(new Uint8Array(chunk)));
  events.push(...parser.end());
  return {
    events: events.map(({ event, data, id }) => ({ event, data, id })),
    retry: events.map((e) => e.retry ?? null),
    comments,
  };
}
"""

# Runs in the page: parse the body cut at every byte (two chunks), and byte by byte;
# report every cut whose events differ from the uncut parse.
EVERY_SPLIT = """
async ({ body }) => {
  const { SSEParser } = await import(new URL("static/sse.js", document.baseURI));
  const bytes = new Uint8Array(body);
  const parse = (chunks) => {
    const parser = new SSEParser();
    const events = chunks.flatMap((chunk) => parser.push(chunk));
    return JSON.stringify([...events, ...parser.end()]);
  };
  const whole = parse([bytes]);
  const bad = [];
  for (let cut = 1; cut < bytes.length; cut++) {
    if (parse([bytes.subarray(0, cut), bytes.subarray(cut)]) !== whole) bad.push(cut);
  }
  const single = [...bytes].map((b) => Uint8Array.of(b));
  return { whole: JSON.parse(whole), bad, byteByByte: parse(single) === whole };
}
"""


def parse_in_page(chat: ChatPage, chunks: list[bytes]) -> dict[str, Any]:
    return chat.page.evaluate(PARSE, {"chunks": [list(chunk) for chunk in chunks]})


def test_parser_reads_every_part_of_the_format(open_chat: OpenChat) -> None:
    chat = open_chat()

    result = parse_in_page(chat, [STREAM])

    assert result["events"] == EXPECTED
    assert result["retry"] == [None, None, None, None, 1500]
    assert result["comments"] == ["ping", "still here"]


def test_any_cut_of_the_body_gives_the_same_events(open_chat: OpenChat) -> None:
    """Cut after every byte, including between CR and LF and inside each UTF-8 character."""
    chat = open_chat()

    result = chat.page.evaluate(EVERY_SPLIT, {"body": list(STREAM)})

    assert [{k: e[k] for k in ("event", "data", "id")} for e in result["whole"]] == EXPECTED
    assert result["bad"] == []
    assert result["byteByByte"] is True


def test_an_event_split_between_two_reads_comes_out_once_and_whole(open_chat: OpenChat) -> None:
    chat = open_chat()
    body = b'id: 7\nevent: content\ndata: {"text":"split"}\n\n'
    cut = body.index(b"data:") + 8  # inside the data line

    result = parse_in_page(chat, [body[:cut], body[cut:]])

    assert result["events"] == [{"event": "content", "data": '{"text":"split"}', "id": "7"}]


def test_a_character_split_between_two_reads_comes_out_whole(open_chat: OpenChat) -> None:
    chat = open_chat()
    body = 'event: content\ndata: {"text":"你好🎉"}\n\n'.encode()
    in_chinese = body.index("好".encode()) + 1  # after the first of its three bytes
    in_emoji = body.index("🎉".encode()) + 2  # halfway through its four bytes

    result = parse_in_page(chat, [body[:in_chinese], body[in_chinese:in_emoji], body[in_emoji:]])

    assert [json.loads(e["data"]) for e in result["events"]] == [{"text": "你好🎉"}]
    assert "\ufffd" not in result["events"][0]["data"]


def test_read_events_yields_events_from_a_chunked_body(open_chat: OpenChat) -> None:
    """readEvents() over a ReadableStream, as the page reads fetch() bodies."""
    chat = open_chat()
    cuts = [5, 40, 41, 97, 98, 99, 150, len(STREAM) - 3]
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]

    events = chat.page.evaluate(
        """async ({ chunks }) => {
          const { readEvents } = await import(new URL("static/sse.js", document.baseURI));
          const body = new ReadableStream({
            start(controller) {
              for (const chunk of chunks) controller.enqueue(new Uint8Array(chunk));
              controller.close();
            },
          });
          const events = [];
          for await (const { event, data, id } of readEvents(body)) {
            events.push({ event, data, id });
          }
          return events;
        }""",
        {"chunks": [list(chunk) for chunk in chunks]},
    )

    assert events == EXPECTED


def test_the_page_shows_a_stream_in_every_line_ending_style(open_chat: OpenChat) -> None:
    """End to end through fetch(): CRLF, comments, an unknown event type, non-ASCII text."""
    chat = open_chat()
    body = (
        ": ping\r\n\r\n"
        'id: 1\r\nevent: start\r\ndata: {"message":"connected"}\r\n\r\n'
        'id: 2\r\nevent: thinking\r\ndata: {"step":"想一想"}\r\n\r\n'
        'id: 3\r\nevent: content\r\ndata: {"text":"你好，"}\r\n\r\n'
        'id: 4\revent: something-new\rdata: {"ignored":true}\r\r'
        'id: 5\nevent: content\ndata: {"text":"world 🎉"}\n\n'
        'id: 6\nevent: done\ndata: {"reason":"complete"}\n\n'
    ).encode()

    def answer(route: Route) -> None:
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    chat.page.route("**/chat", answer)
    chat.send("hi")

    reply = chat.wait_for_reply()
    expect(reply.locator(".content")).to_have_text("你好，world 🎉")
    expect(reply.locator(".thinking li")).to_have_text(["想一想"])
    expect(reply.locator(".error-text")).to_have_count(0)
