"""What fuzzing the API found, pinned as plain tests so they do not depend on the generator
drawing the same input again."""

from __future__ import annotations

import httpx

from tests.support.sse import stream_chat
from tests.support.tokens import bearer


def test_a_get_message_with_a_line_break_is_streamed_like_any_other(client: httpx.Client) -> None:
    """schemathesis drew a message with a newline in it for GET /chat/{message} and got 404.

    The route's `{message:path}` matches with Starlette's `path` convertor, whose regex `.*`
    does not match a newline, so `/chat/line%0Aone` matches no route at all (and a message
    ending in a newline matches with the newline dropped, as `$` matches before it). POST
    takes the same text; GET must too."""
    stream = stream_chat(client, "GET", "/chat/line%0Aone", headers=bearer())

    assert stream.status == 200, stream.raw
    assert stream.names[-1] == "done"
    assert (
        stream.text
        == "You said: line\none. This is a complete AI chat demo, with streaming output!"
    )


def test_get_chat_keeps_a_trailing_line_break(client: httpx.Client) -> None:
    stream = stream_chat(client, "GET", "/chat/two%0A", headers=bearer())

    assert stream.status == 200, stream.raw
    assert stream.text == "You said: two\n. This is a complete AI chat demo, with streaming output!"


def test_the_openapi_schema_documents_the_plain_text_answer_of_get_root(
    client: httpx.Client,
) -> None:
    """schemathesis called GET / and got `text/plain` (the demo stream for curl), which the
    schema does not document: it lists `text/html` only. A generated client would refuse
    the very answer the contract gives to `curl -N`."""
    served = client.get("/").headers["content-type"]
    documented = client.get("/openapi.json").json()["paths"]["/"]["get"]["responses"]["200"]

    assert served.startswith("text/plain")
    assert set(documented["content"]) == {"text/html", "text/plain"}
