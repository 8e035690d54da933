"""A stream's body chunk written to the socket now, by whoever has it, without a trip
through uvicorn's `send` (service/__init__.py lists this among the deviations).

A caught-up reader parked in `Cursor.wait` costs each event two task steps when woken to
write it: the generation's, which appends, and the reader's, which takes and sends. With
`writer`, what is appended for each such reader in a turn of the loop is written to its
socket at the end of that turn, by one callback for all of them (`Responses.write_soon`,
response.py), and the reader's task stays parked until something needs it: a terminal
entry, a client that stopped reading, or the end.

`writer(send)` is the uvicorn httptools request cycle behind `send` (None behind anything
else: the stream then always goes through `send`). `write_now` writes exactly what that
cycle's `send` writes for a chunk of a chunked body, `<size in hex>\\r\\n<chunk>\\r\\n`,
and only when `send` would write it at once; whenever `send` would wait (writing paused
behind a full buffer) or refuse (the client gone, the body not chunked, the response not
begun or already complete) it writes nothing and returns False.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

Writer = RequestResponseCycle


def writer(send: Any) -> Writer | None:
    cycle = getattr(send, "__self__", None)
    return cycle if type(cycle) is RequestResponseCycle else None


def write_now(cycle: Writer, chunk: bytes) -> bool:
    if (
        cycle.flow.write_paused
        or cycle.disconnected
        or not cycle.chunked_encoding
        or cycle.response_complete
        or not cycle.response_started
    ):
        return False
    cycle.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    return True
