"""A generation's log and its cursors (service/log.py): entries in order, trimmed to their
byte bound, and a writer held back by a reader too far behind."""

from __future__ import annotations

import asyncio

from service.log import LAG_BYTES, Log


def _wire(n: int, size: int = 10) -> bytes:
    return b"%d:" % n + b"x" * (size - len(b"%d:" % n))


def test_entries_are_numbered_from_one_and_readers_start_where_they_ask() -> None:
    log = Log()
    for n in range(1, 6):
        log.append("content", _wire(n))
    assert [e.seq for e in log.entries] == [1, 2, 3, 4, 5]
    assert log.last_seq == 5
    cursor = log.attach(after=3)
    batch = cursor.take()
    assert (batch.body, batch.last_seq) == (_wire(4) + _wire(5), 5)
    cursor.sent(batch)
    assert cursor.take().count == 0
    assert log.readers == 1
    log.detach(cursor)
    assert log.readers == 0


def test_the_log_keeps_at_most_its_bytes_and_refuses_readers_from_before_them() -> None:
    log = Log(max_bytes=35)
    for n in range(1, 11):
        log.append("content", _wire(n))
    assert [e.seq for e in log.entries] == [8, 9, 10]
    assert log.base == 7
    assert not log.retains(6)
    assert log.retains(7) and log.retains(10)
    assert not log.retains(11)
    assert [e.seq for e in log.since(2)] == [8, 9, 10]  # from the first retained


def test_a_batch_ends_at_the_first_terminal_entry() -> None:
    log = Log()
    for name in ("start", "content", "done"):
        log.append(name, _wire(log.last_seq + 1))
    batch = log.attach().take()
    assert (batch.count, batch.last, batch.last_seq) == (3, "done", 3)
    assert batch.body == b"".join(_wire(n) for n in (1, 2, 3))


def test_a_kept_reply_costs_about_its_bytes() -> None:
    """A 1 MiB log of small events takes well under 1.5 MiB (an object per event took
    three times its bytes)."""
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    log = Log(max_bytes=1 << 20)
    wire = b'id: abcdefghijklmnopqrstuv:1234\nevent: content\ndata: {"text":"x"}\n\n'
    while log.total < 2 << 20:  # past the bound: trimmed as it goes
        log.append("content", wire)
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    retained = log.total - log._start
    assert retained <= 1 << 20
    assert kept < 1.5 * retained, (kept, retained)


def test_a_log_made_elsewhere_can_start_past_one() -> None:
    log = Log(base=40)
    log.append("content", _wire(41))
    assert log.last_seq == 41 and log.retains(40) and not log.retains(39)


def test_a_waiting_reader_wakes_on_an_append_and_on_the_close() -> None:
    async def body() -> tuple[list[int], bool]:
        log = Log()
        cursor = log.attach()
        waiting = asyncio.ensure_future(cursor.wait())
        await asyncio.sleep(0)
        assert log.waiting == 1
        log.append("content", _wire(1))
        await asyncio.wait_for(waiting, 1)
        seen = [cursor.take().last_seq]
        waiting = asyncio.ensure_future(cursor.wait())
        await asyncio.sleep(0)
        log.close()
        await asyncio.wait_for(waiting, 1)
        await cursor.wait()  # closed: returns at once
        return seen, log.closed

    assert asyncio.run(body()) == ([1], True)


def test_a_waiting_reader_that_takes_entries_itself_is_woken_only_for_the_rest() -> None:
    """`Cursor.deliver`: while a reader waits, it is told of each entry instead of woken
    when it takes them itself (the stream writes them at the end of the loop's turn); one
    it refuses, and a terminal one, wake it."""

    async def body() -> None:
        log = Log()
        cursor = log.attach()
        told: list[int] = []
        accept = True

        def deliver() -> bool:
            told.append(log.last_seq)
            return accept

        cursor.deliver = deliver
        waiting = asyncio.ensure_future(cursor.wait())
        await asyncio.sleep(0)
        log.append("start", _wire(1))
        log.append("content", _wire(2))
        await asyncio.sleep(0)
        assert not waiting.done()
        assert told == [1, 2]
        batch = cursor.take()  # what the reader takes, still waiting
        assert (batch.body, batch.last_seq) == (_wire(1) + _wire(2), 2)
        cursor.sent(batch)

        accept = False  # say, a client that stopped reading: its own task must send
        log.append("content", _wire(3))
        await asyncio.wait_for(waiting, 1)
        assert cursor.take().body == _wire(3)
        cursor.sent(cursor.take())

        accept = True
        waiting = asyncio.ensure_future(cursor.wait())
        await asyncio.sleep(0)
        log.append("done", _wire(4))  # the end: the reader ends its response itself
        await asyncio.wait_for(waiting, 1)
        assert told == [1, 2, 3]
        batch = cursor.take()
        assert (batch.body, batch.last) == (_wire(4), "done")

    asyncio.run(body())


def test_a_reader_too_far_behind_holds_the_writer_back_until_it_catches_up() -> None:
    async def body() -> tuple[bool, bool, bool]:
        log = Log()
        cursor = log.attach()
        while log.total <= LAG_BYTES + LAG_BYTES // 2:
            log.append("content", _wire(log.last_seq + 1, 1000))
        held = log.held_back is not None
        assert log.held_back is not None
        waiting = log.held_back
        cursor.sent(cursor.take())
        return held, waiting.done(), log.held_back is None

    assert asyncio.run(body()) == (True, True, True)


def test_a_writer_held_back_is_released_when_the_slow_reader_leaves() -> None:
    async def body() -> bool:
        log = Log()
        cursor = log.attach()
        while log.held_back is None:
            log.append("content", _wire(log.last_seq + 1, 1000))
        waiting = log.held_back
        log.detach(cursor)
        return waiting.done()

    assert asyncio.run(body())


def test_a_span_is_the_entries_after_a_place_as_one_slice() -> None:
    log = Log()
    for name in ("start", "content", "done"):
        log.append(name, _wire(log.last_seq + 1))
    span = log.span(1)
    assert span is not None
    assert (span.first, span.last, span.names) == (2, 3, ["content", "done"])
    assert span.wires() == [e.wire for e in log.since(1)]
    assert span.body == _wire(2) + _wire(3)
    assert log.span(3) is None
