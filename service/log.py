"""A generation's log: its encoded events, in order, and the readers that follow it.

    generation (appends) -> Log: entries, numbered from 1 -> Cursor per reader (a response)

The entries are kept as their bytes, back to back in one buffer, with two arrays beside it
(where each ends, and its name's number), not as an object each: a kept reply then costs
about its wire size (an object per event cost three times it), and a reader takes what is
new as one slice (`Cursor.take`), the bytes it writes as they are.

Memory stays bounded two ways. A reader that falls more than LAG_BYTES behind holds the
writer back (`held_back`, which the generation awaits after an append), as a slow client
held back the backend before generations existed: an upstream then waits on TCP flow
control rather than filling this worker's memory. And the log keeps at most `max_bytes` of
encoded events (CHAT_RESUME_MAX_BYTES) for readers yet to come; older ones are dropped,
and starting a reader from before them is refused (`retains`).
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from .events import NAMES, TERMINAL

# How far (in encoded bytes) a reader may fall behind before the writer waits for it.
LAG_BYTES = 16 * 1024
DEFAULT_MAX_BYTES = 1024 * 1024
KINDS = {name: code for code, name in enumerate(NAMES)}
OTHER = len(NAMES)  # a name outside NAMES (none is written today)
TERMINAL_KINDS = frozenset(KINDS[name] for name in TERMINAL)


@dataclass(frozen=True, slots=True)
class Entry:
    """One event, as the log gives it back: its number, its name, its bytes on the wire, and
    where those end in the log's output."""

    seq: int
    name: str
    wire: bytes
    end: int


@dataclass(frozen=True, slots=True)
class Batch:
    """What a reader takes at once: the entries after its place, as one slice of bytes.
    `kinds` holds each entry's name's number (events.NAMES); a batch ends at the first
    terminal entry (`done` or `error`), which is then its last."""

    body: bytes
    kinds: bytes
    last_seq: int
    end: int

    @property
    def count(self) -> int:
        return len(self.kinds)

    @property
    def last(self) -> str | None:
        return _name(self.kinds[-1]) if self.kinds else None


EMPTY = Batch(b"", b"", 0, 0)


@dataclass(frozen=True, slots=True)
class Span:
    """The retained entries after a place, as the relay publishes them: one slice of bytes,
    each entry's name and size, the numbers of the first and the last."""

    first: int
    last: int
    body: bytes
    names: list[str]
    sizes: list[int]

    def wires(self) -> list[bytes]:
        """Each entry's bytes."""
        wires, at = [], 0
        body = self.body
        for size in self.sizes:
            wires.append(body[at : at + size])
            at += size
        return wires


class Log:
    __slots__ = (
        "_buffer",
        "_cursors",
        "_ends",
        "_first",
        "_kinds",
        "_lag_check_at",
        "_start",
        "base",
        "closed",
        "held_back",
        "max_bytes",
        "total",
        "waiting",
    )

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, base: int = 0) -> None:
        self._buffer = bytearray()  # the retained entries' bytes; begins at output `_start`
        self._ends = array("q")  # where each entry ends in the output; retained from `_first`
        self._kinds = bytearray()  # each entry's name's number; retained from `_first`
        self._first = 0  # entries before it in the arrays are dropped, not yet cut out
        self._start = 0
        self.base = base  # the number of the entry before the first retained one
        self.total = 0  # encoded bytes appended so far
        self.max_bytes = max_bytes
        self.closed = False  # nothing more will be appended
        self.held_back: asyncio.Future[None] | None = None  # while a reader is too far behind
        self.waiting = 0  # readers waiting for the next entry
        self._lag_check_at = LAG_BYTES
        self._cursors: list[Cursor] = []  # a list: most logs have one reader

    @property
    def last_seq(self) -> int:
        return self.base + len(self._kinds) - self._first

    def append(self, name: str, wire: bytes) -> None:
        total = self.total = self.total + len(wire)
        kind = KINDS.get(name, OTHER)
        self._buffer += wire
        self._ends.append(total)
        self._kinds.append(kind)
        if total - self._start > self.max_bytes:
            self._trim()
        if self.waiting:
            self._wake(kind)
        if total >= self._lag_check_at:  # checked every so many bytes, not every event
            self._lag_check_at = total + LAG_BYTES // 4
            if self._cursors and self.held_back is None and self.lag() > LAG_BYTES:
                self.held_back = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        """Nothing more comes: every waiting reader wakes to find the end."""
        self.closed = True
        self._wake()

    def _trim(self) -> None:
        """Keep at most `max_bytes` of entries; attached readers are never that far behind.
        The buffer's front is cut in place (a bytearray cut at its front moves a pointer,
        not its bytes); the arrays are cut once half of them is dropped."""
        keep_from = self.total - self.max_bytes
        ends, first, start = self._ends, self._first, self._start
        last = len(ends) - 1  # the newest is kept, however large
        while start < keep_from and first < last:
            start = ends[first]
            first += 1
        del self._buffer[: start - self._start]
        self.base += first - self._first
        self._start, self._first = start, first
        if first > len(ends) // 2:
            del ends[:first]
            del self._kinds[:first]
            self._first = 0

    def _wake(self, kind: int | None = None) -> None:
        """Each waiting reader, told of the entry just appended (of `kind`; None: the log
        has closed). One that takes entries without waking (`Cursor.deliver`) is told so
        instead; a terminal entry always wakes its reader, which ends its response."""
        for cursor in self._cursors:
            waiter = cursor.waiter
            if waiter is None or waiter.done():
                continue
            deliver = cursor.deliver
            if deliver is None or kind is None or kind in TERMINAL_KINDS or not deliver():
                waiter.set_result(None)

    def _index(self, position: int) -> int:
        """The array index of the entry after `position` (clamped to the retained ones)."""
        return self._first + max(0, position - self.base)

    def _offset(self, index: int) -> int:
        """Where the entry at array `index` begins in the output."""
        return self._ends[index - 1] if index > self._first else self._start

    def take(self, position: int) -> Batch:
        """The entries after `position` up to the first terminal one, in one slice."""
        index = self._index(position)
        kinds = bytes(self._kinds[index:])
        if not kinds:
            return EMPTY
        for n, kind in enumerate(kinds):
            if kind in TERMINAL_KINDS:
                kinds = kinds[: n + 1]
                break
        last = index + len(kinds) - 1
        begin, end = self._offset(index), self._ends[last]
        body = bytes(self._buffer[begin - self._start : end - self._start])
        return Batch(body, kinds, self.base + last - self._first + 1, end)

    def span(self, position: int) -> Span | None:
        """The retained entries after `position` (None: there are none), without an object
        each."""
        index = self._index(position)
        if index >= len(self._kinds):
            return None
        begin = self._offset(index)
        ends = self._ends
        sizes = [ends[index] - begin]
        sizes += [ends[i] - ends[i - 1] for i in range(index + 1, len(ends))]
        names = [NAMED[kind] for kind in self._kinds[index:]]
        body = bytes(self._buffer[begin - self._start :])
        return Span(self.base + index - self._first + 1, self.last_seq, body, names, sizes)

    def since(self, position: int) -> list[Entry]:
        """The retained entries after `position`, each as an Entry (a reader behind the
        retained ones gets them from the first retained)."""
        entries = []
        for index in range(self._index(position), len(self._kinds)):
            begin, end = self._offset(index), self._ends[index]
            wire = bytes(self._buffer[begin - self._start : end - self._start])
            seq = self.base + index - self._first + 1
            entries.append(Entry(seq, _name(self._kinds[index]), wire, end))
        return entries

    @property
    def entries(self) -> list[Entry]:
        return self.since(self.base)

    def retains(self, position: int) -> bool:
        """Whether a reader may start after `position`: everything after it is kept."""
        return self.base <= position <= self.last_seq

    def lag(self) -> int:
        """How far (in encoded bytes) the slowest reader is behind."""
        if not self._cursors:
            return 0
        return self.total - min(cursor.offset for cursor in self._cursors)

    def release(self) -> None:
        held, self.held_back = self.held_back, None
        if held is not None and not held.done():
            held.set_result(None)

    # --- readers -------------------------------------------------------------------------

    def attach(self, after: int = 0) -> Cursor:
        """A reader from after entry `after` (check `retains` first)."""
        index = self._index(after)
        offset = self._offset(index) if index < len(self._kinds) else self.total
        cursor = Cursor(self, after, offset)
        self._cursors.append(cursor)
        return cursor

    def detach(self, cursor: Cursor) -> None:
        if cursor in self._cursors:
            self._cursors.remove(cursor)
        if self.held_back is not None and self.lag() <= LAG_BYTES:
            self.release()

    @property
    def readers(self) -> int:
        return len(self._cursors)


class Cursor:
    """A reader's place in a log."""

    __slots__ = ("deliver", "log", "offset", "position", "waiter")

    def __init__(self, log: Log, position: int, offset: int) -> None:
        self.log = log
        self.position = position  # the last entry read
        self.offset = offset  # where that entry ends in the log's output
        self.waiter: asyncio.Future[None] | None = None  # while it waits for more
        # While it waits, told of a new entry: True when the reader takes it without being
        # woken (it writes what is new at the end of the loop's turn: response.py).
        self.deliver: Callable[[], bool] | None = None

    def take(self) -> Batch:
        """What was appended after this position so far (`count` 0: nothing yet)."""
        return self.log.take(self.position)

    async def wait(self) -> None:
        """Until the next entry is appended, or the log closes."""
        log = self.log
        if log.closed:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        log.waiting += 1
        try:
            await self.waiter
        finally:
            self.waiter = None
            log.waiting -= 1

    def sent(self, batch: Batch) -> None:
        self.position = batch.last_seq
        self.offset = batch.end
        log = self.log
        if log.held_back is not None and log.lag() <= LAG_BYTES:
            log.release()


NAMED = (*NAMES, "error")  # by kind: a name outside NAMES reads as `error`


def _name(kind: int) -> str:
    return NAMED[kind]
