"""A real third-party SSE client, the `eventsource` npm package (the WHATWG EventSource),
reads a reply whose connection drops mid-way: it reconnects by itself to the same URL with
a Last-Event-ID header, and the service resumes the stream there. No event is lost or
repeated."""

from __future__ import annotations

import json
import shutil
import subprocess
from urllib.parse import quote

import pytest

from tests.support.demo_text import demo_reply
from tests.support.service import REPO, running_service
from tests.support.tokens import make_token

PEERS = REPO / "tests" / "peers"


@pytest.mark.parametrize("drop_after", [2, 12])
def test_eventsource_reconnects_and_the_reply_is_whole_once(drop_after: int) -> None:
    node = shutil.which("node")
    assert node, "scripts/test.sh installs Node.js"
    message = "ein Gruß, 你好"
    with running_service({"CHAT_DEMO_DELAY_SCALE": "0.2"}, workers=1) as svc:
        result = subprocess.run(
            [
                node,
                str(PEERS / "eventsource-client.mjs"),
                f"{svc.url}/chat/{quote(message)}",
                make_token(sub="eventsource"),
                str(drop_after),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=PEERS,
        )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    events, summary = lines[:-1], lines[-1]
    assert summary["reconnects"] >= 1
    stream_id = events[0]["data"]["stream"]
    assert [e["id"] for e in events] == [f"{stream_id}:{n}" for n in range(1, len(events) + 1)]
    assert events[-1]["name"] == "done"
    text = "".join(e["data"]["text"] for e in events if e["name"] == "content")
    assert text == demo_reply(message)
    resumed = [r for r in svc.records() if r.get("resumed")]
    assert resumed and resumed[0]["route"] == "/chat/{message}"
