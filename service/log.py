"""A generation's log: its encoded events, in order, and the readers that follow it.

    generation (appends) -> Log: entries, numbered from 1 -> Cursor per reader (a response)

Memory stays bounded two ways. A reader that falls more than LAG_BYTES behind holds the
writer back (`held_back`, which the generation awaits after an append), as a slow client
held back the backend before generations existed: an upstream then waits on TCP flow
control rather than filling this worker's memory. And the log keeps at most `max_bytes` of
encoded events (CHAT_RESUME_MAX_BYTES) for readers yet to come; older ones are dropped,
and starting a reader from before them is refused (`retains`).

An entry keeps the event's name (its outcome, for the last one) and its bytes on the wire,
nothing more: the data is read back from the wire (events.decode) on the rare occasions it
is needed whole.
"""

from __future__ import annotations

import asyncio

# How far (in encoded bytes) a reader may fall behind before the writer waits for it.
LAG_BYTES = 16 * 1024
DEFAULT_MAX_BYTES = 1024 * 1024


class Entry:
    """One event: its number, its name, its bytes on the wire, and where those end in the
    log's output (for measuring how far behind a reader is)."""

    __slots__ = ("end", "name", "seq", "wire")

    def __init__(self, seq: int, name: str, wire: bytes, end: int) -> None:
        self.seq = seq
        self.name = name
        self.wire = wire
        self.end = end


class Log:
    __slots__ = (
        "_cursors",
        "_lag_check_at",
        "_retained_from",
        "base",
        "closed",
        "entries",
        "held_back",
        "max_bytes",
        "total",
        "waiting",
    )

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, base: int = 0) -> None:
        self.entries: list[Entry] = []  # the retained ones; entries[0] has seq `base + 1`
        self.base = base
        self.total = 0  # encoded bytes appended so far
        self.max_bytes = max_bytes
        self.closed = False  # nothing more will be appended
        self.held_back: asyncio.Future[None] | None = None  # while a reader is too far behind
        self.waiting = 0  # readers waiting for the next entry
        self._retained_from = 0  # where entries[0] begins in the output
        self._lag_check_at = LAG_BYTES
        self._cursors: list[Cursor] = []  # a list: most logs have one reader

    @property
    def last_seq(self) -> int:
        return self.base + len(self.entries)

    @property
    def last(self) -> Entry | None:
        return self.entries[-1] if self.entries else None

    def append(self, name: str, wire: bytes) -> Entry:
        total = self.total = self.total + len(wire)
        entry = Entry(self.base + len(self.entries) + 1, name, wire, total)
        self.entries.append(entry)
        if total - self._retained_from > self.max_bytes:
            self._trim()
        if self.waiting:
            self._wake()
        if total >= self._lag_check_at:  # checked every so many bytes, not every event
            self._lag_check_at = total + LAG_BYTES // 4
            if self._cursors and self.held_back is None and self.lag() > LAG_BYTES:
                self.held_back = asyncio.get_running_loop().create_future()
        return entry

    def close(self) -> None:
        """Nothing more comes: every waiting reader wakes to find the end."""
        self.closed = True
        self._wake()

    def _trim(self) -> None:
        """Keep at most `max_bytes` of entries; attached readers are never that far behind."""
        keep_from = self.total - self.max_bytes
        drop = 0
        for entry in self.entries:
            if entry.end - len(entry.wire) >= keep_from:
                break
            drop += 1
        del self.entries[:drop]
        self.base += drop
        self._retained_from = self.entries[0].end - len(self.entries[0].wire)

    def _wake(self) -> None:
        for cursor in self._cursors:
            waiter = cursor.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def since(self, position: int) -> list[Entry]:
        """The retained entries after `position` (a reader behind the retained ones gets
        them from the first retained)."""
        return self.entries[max(0, position - self.base) :]

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
        offset = self.total
        for entry in self.since(after):
            offset = entry.end - len(entry.wire)
            break
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

    __slots__ = ("log", "offset", "position", "waiter")

    def __init__(self, log: Log, position: int, offset: int) -> None:
        self.log = log
        self.position = position  # the last entry read
        self.offset = offset  # where that entry ends in the log's output
        self.waiter: asyncio.Future[None] | None = None  # while it waits for more

    def available(self) -> list[Entry]:
        """The entries appended after this position so far."""
        log = self.log
        return log.entries[self.position - log.base :]

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

    def sent(self, entry: Entry) -> None:
        self.position = entry.seq
        self.offset = entry.end
        log = self.log
        if log.held_back is not None and log.lag() <= LAG_BYTES:
            log.release()
