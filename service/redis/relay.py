"""With Redis, a generation is not bound to the worker that runs it: the Redis twin of
`generations.Elsewhere` (its other twin, `Local`, knows of nothing elsewhere).

- Publishing: a generation's events go to a Redis stream (`keys.stream`: `...:log`), an
  entry per publish (the wire bytes of the events appended since the last, their names
  and sizes, the entry's id the number of the first), through the Store's batches: never
  a round trip per event. Its owner, worker and state are in `...:meta`. Both live while
  it runs and CHAT_RESUME_WINDOW after it ends (their lives set when they are made,
  renewed every RUNNING_TTL / 3 and cut at the end: not with every entry), and the log is
  trimmed as the generation's own is. One publish per generation is in flight at a time
  (see `_publish`).
- When: its first events and its end at once (in the turn of the loop they came in), and
  so everything while no client reads it here (detached: its client may come back on any
  worker). While its client reads it here and nobody follows it from another worker, its
  events wait PUBLISH_SECONDS and go together: a publish an event, and its announcement,
  had halved a worker's paced capacity (593 streams with Redis, 1,250 without, in one
  run of `python -m bench`), and a publish every 0.25 s still cost a fifth of its CPU
  (900 paced streams: 0.73 of a core, 0.62 at 1 s, 0.56 publishing only when asked).
  A follower elsewhere asks for more through the worker's inbox (`+<stream id>`); from
  then on each turn's events are published in that turn and announced on the stream's
  channel (`keys.stream_news`) in the same batch, and so is the end. So a resume
  elsewhere catches up within INBOX_SECONDS, then follows within a round trip; and a
  worker that dies takes at most PUBLISH_SECONDS of events that only its own clients saw
  with it: a client's resume from past what Redis holds is then told `interrupted`, after
  the last event it saw.
- Following: a resume on any worker or pod of a stream that runs elsewhere reads that log
  (`follow`): what it holds so far, then a source of the rest, read whenever the stream's
  channel announces more (notices.py) and at least every CHECK_SECONDS, which feeds an
  ordinary generation on the reading worker. While it reads, it keeps `...:readers` alive,
  so the worker running the generation does not stop it for want of readers; if that
  worker dies (its `alive` key lapses) the source ends with `error {"code": "interrupted"}`.
- Stopping: a stop reaches the worker running the generation through that worker's inbox
  (`keys.worker_inbox`, the stream's id), which every worker with generations polls every
  INBOX_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import events
from ..events import EVENTS, INTERRUPTED, Codec, Event
from ..generations import Followed
from ..observability.logging import get_logger
from . import keys
from .notices import Notices
from .store import Store

if TYPE_CHECKING:
    from ..generation import Generation

log = get_logger("service.relay")

# A follower's own look at the stream (its lease, its state, whether its worker lives), when
# no notice has come meanwhile; the lease outlives three of them.
CHECK_SECONDS = 1.0
INBOX_SECONDS = 0.25
ALIVE_SECONDS = 6  # a worker's heartbeat lives this long, renewed every third of it
LEASE_MS = 3000  # a follower's claim that someone reads the stream
# How long the events of a generation read on its own worker, and followed nowhere else,
# wait to be published together.
PUBLISH_SECONDS = 2.0
# How long a resume that saw more than the log holds waits for the rest (its worker reads
# its inbox every INBOX_SECONDS, then publishes).
HURRY_SECONDS = 4 * INBOX_SECONDS
RUNNING_TTL = 120  # seconds the keys of a running generation live, renewed while it runs


class Relay:
    def __init__(
        self, store: Store, window: float, codecs: Mapping[str, Codec] | None = None
    ) -> None:
        self.store = store
        # A followed stream's own events (its `shutdown`) go on the wire as its surface's.
        self.codecs = codecs or {EVENTS.name: EVENTS}
        self.window_ms = max(1, int(window * 1000))
        self.worker = secrets.token_hex(8)
        self._running: dict[str, Generation] = {}  # published from here while they run
        self._published: dict[Generation, int] = {}  # the last entry sent of each
        self._dirty: set[Generation] = set()  # to publish at the end of this turn
        # Read here: published when due (the timer is cancelled when they go sooner, so
        # that it does not keep an ended generation for PUBLISH_SECONDS).
        self._unpublished: dict[Generation, asyncio.TimerHandle] = {}
        self._followed: set[Generation] = set()  # from another worker: published at once
        self._announcing: set[Generation] = set()  # the next publish announces itself
        self._in_flight: dict[Generation, asyncio.Future[None]] = {}  # sent, unanswered
        self._behind: set[Generation] = set()  # appended to meanwhile: publish when it is
        self._flush_scheduled = False
        self._renewing: set[Generation] = set()  # their keys' lives renewed with the next publish
        self._chores: asyncio.Task[None] | None = None
        self._notices: Notices | None = None  # made with the first follower

    # --- publishing this worker's generations -------------------------------------------

    def started(self, generation: Generation) -> None:
        self._running[generation.id] = generation
        self._published[generation] = 0
        if self._chores is None or self._chores.done():
            self._chores = asyncio.ensure_future(self._keep_up())

    def appended(self, generation: Generation) -> None:
        if (
            generation.readers  # its client reads it here
            and generation not in self._followed
            and self._published.get(generation)  # and its first publish has gone
        ):
            # Nobody elsewhere waits for it: in a moment, with what follows meanwhile. Each
            # generation on its own clock, so that a worker's publishes do not come at once.
            if generation not in self._unpublished:
                loop = asyncio.get_running_loop()
                self._unpublished[generation] = loop.call_later(
                    PUBLISH_SECONDS, self._due, generation
                )
            return
        self._dirty.add(generation)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _due(self, generation: Generation) -> None:
        if self._unpublished.pop(generation, None) is not None:
            self._publish(generation)

    def _not_due(self, generation: Generation) -> bool:
        """It goes now, not when its timer says: whether it had one."""
        timer = self._unpublished.pop(generation, None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def detached(self, generation: Generation) -> None:
        """Its client left: what it has not published goes now, so that a resume on another
        worker finds it; and so does all it appends while no one here reads it."""
        if self._not_due(generation):
            self.appended(generation)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for generation in dirty:
            self._publish(generation)

    def _publish(self, generation: Generation) -> None:
        """Send what the generation appended since its last publish. One publish per
        generation is in flight at a time: the Store may send the next batch on another
        connection before the last is answered, and a log entry that reached Redis after a
        newer one would be refused (its id no longer the newest), leaving a hole that a
        resume elsewhere would skip over. What is appended meanwhile goes next, together."""
        if generation in self._in_flight:
            self._behind.add(generation)
            return
        published = self._published.get(generation)
        if published is None:
            return  # ended and published whole already
        glog = generation.log
        span = glog.span(published)
        log_key, meta_key, _ = keys.stream(generation.user, generation.id)
        commands: list[tuple[Any, ...]] = []
        if published == 0:
            meta = ("user", generation.user, "worker", self.worker, "state", "running")
            commands.append(("HSET", meta_key, *meta, "codec", generation.codec.name))
        if span is not None:
            # An event is one or more SSE blocks (OpenAI's end is three): each one's size.
            names, sizes = " ".join(span.names), " ".join(map(str, span.sizes))
            fields = ("w", span.body, "n", names, "s", sizes, "l", span.last)
            commands.append(("XADD", log_key, f"{span.first}-1", *fields))
            self._published[generation] = span.last
            if glog.base:  # the generation dropped its oldest: so does the log
                commands.append(("XTRIM", log_key, "MINID", f"{glog.base + 1}-0"))
        if generation.ended:
            commands.append(("HSET", meta_key, "state", "ended"))
            del self._published[generation]
        if (
            generation.ended
            or generation in self._announcing
            or (span is not None and generation in self._followed)
        ):
            self._announcing.discard(generation)
            commands.append(("PUBLISH", keys.stream_news(generation.user, generation.id), b""))
        # Lives set when the keys are made (a publish before the first entry makes only the
        # meta, and comes again), renewed by the chores, cut to the window at the end.
        if published == 0 or generation.ended or generation in self._renewing:
            self._renewing.discard(generation)
            ttl = self.window_ms if generation.ended else RUNNING_TTL * 1000
            commands += [("PEXPIRE", log_key, ttl), ("PEXPIRE", meta_key, ttl)]
        if not commands:
            return
        sent = self.store.send("resume", *commands)
        if sent is not None:  # None: Redis is down, and nothing is on its way
            self._in_flight[generation] = sent
            sent.add_done_callback(lambda _: self._landed(generation))

    def _landed(self, generation: Generation) -> None:
        del self._in_flight[generation]
        if generation in self._behind:
            self._behind.discard(generation)
            self._publish(generation)

    def ended(self, generation: Generation) -> bool:
        """Its last events and its end go out now; its keys live a window more, and a
        resume is served from them: nothing is kept in this worker. (The inbox poll stops
        by itself within INBOX_SECONDS when no generation is left; stopping it at once cost
        a new poller, and a round trip, per stream.)"""
        self._dirty.discard(generation)
        self._not_due(generation)
        self._publish(generation)  # announced whoever follows: its end
        self._running.pop(generation.id, None)
        self._renewing.discard(generation)
        self._followed.discard(generation)
        self._announcing.discard(generation)
        return True

    async def _keep_up(self) -> None:
        """While this worker runs generations: take stops and asks to publish at once from
        its inbox, keep its heartbeat, and keep its generations' keys alive."""
        inbox, alive = keys.worker_inbox(self.worker), keys.worker_alive(self.worker)
        beats = 0
        while self._running:
            if beats % max(1, int(ALIVE_SECONDS / 3 / INBOX_SECONDS)) == 0:
                self.store.send("resume", ("SET", alive, 1, "EX", ALIVE_SECONDS), urgent=True)
            if beats % max(1, int(RUNNING_TTL / 3 / INBOX_SECONDS)) == 0 and beats:
                for generation in list(self._running.values()):
                    # Its keys' lives renewed in turn with its publishes: a renewal must
                    # not land after its end has shortened them to the window.
                    self._renewing.add(generation)
                    self._publish(generation)
            beats += 1
            asks: Any = await self.store.execute("resume", "LPOP", inbox, 64, fallback=None)
            for raw in asks or ():
                ask = raw.decode(errors="replace")
                if ask.startswith("+"):  # followed from elsewhere: publish at once from now
                    followed = self._running.get(ask[1:])
                    if followed is not None and followed in self._published:
                        self._followed.add(followed)
                        self._announcing.add(followed)  # its follower may have missed some
                        self._not_due(followed)
                        self._publish(followed)
                    continue
                stopped = self._running.get(ask)
                if stopped is not None:
                    stopped.stop("cancelled")
            await asyncio.sleep(INBOX_SECONDS)

    async def read_elsewhere(self, generation: Generation) -> bool:
        _, _, readers = keys.stream(generation.user, generation.id)
        found = await self.store.execute("resume", "EXISTS", readers, fallback=0)
        return bool(found)

    # --- reaching generations that run elsewhere ----------------------------------------

    async def _meta(self, stream_id: str, user: str) -> dict[bytes, bytes] | None:
        _, meta_key, _ = keys.stream(user, stream_id)
        raw: Any = await self.store.execute("resume", "HGETALL", meta_key, fallback=None)
        if not raw:
            return None
        # A map under RESP3 (redis-py's default now), a flat list under RESP2.
        meta = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
        return meta if meta.get(b"user") == user.encode() else None

    async def stop(self, stream_id: str, user: str) -> bool:
        meta = await self._meta(stream_id, user)
        if meta is None:
            return False
        if meta.get(b"state") == b"running":
            inbox = keys.worker_inbox(meta[b"worker"].decode())
            await self.store.execute("resume", "RPUSH", inbox, stream_id, fallback=None)
            await self.store.execute("resume", "PEXPIRE", inbox, 60_000, fallback=None)
        return True

    async def follow(self, stream_id: str, user: str, after: int) -> Followed | None:
        meta = await self._meta(stream_id, user)
        if meta is None:
            return None
        log_key, _, _ = keys.stream(user, stream_id)
        worker = meta.get(b"worker", b"").decode()
        codec = self.codecs.get(meta.get(b"codec", b"events").decode(), EVENTS)
        first, history, last_chunk = await self._read_log(log_key)
        base = first - 1 if history else 0
        if after > base + len(history) and worker and meta.get(b"state") == b"running":
            # The client saw more than the log holds: read there, its events wait
            # PUBLISH_SECONDS. Ask for the rest now, and read again once it is there.
            alive_key = keys.worker_alive(worker)
            if not await self.store.execute("resume", "EXISTS", alive_key, fallback=1):
                # Its worker died with them: the client is told, after the last it saw.
                return Followed(after + 1, [], _interrupted(), codec)
            await self._hurry(stream_id, user, worker)
            first, history, last_chunk = await self._read_log(log_key)
            base = first - 1 if history else 0
        if not base <= after <= base + len(history):
            return None
        source = self._following(stream_id, user, worker, last_chunk, base + len(history))
        return Followed(first or 1, history, source, codec)

    async def _read_log(self, log_key: str) -> tuple[int, list[tuple[str, bytes]], bytes | None]:
        """What a stream's log holds: the number of its first event, each event's name and
        bytes, and the id of its last entry."""
        chunks: Any = await self.store.execute("resume", "XRANGE", log_key, "-", "+", fallback=None)
        history: list[tuple[str, bytes]] = []
        first = 0
        last_chunk: bytes | None = None
        for chunk_id, fields in chunks or ():
            start, taken = _taken(chunk_id, fields)
            if not history:
                first = start
            history += taken[max(0, first + len(history) - start) :]
            last_chunk = chunk_id
        return first, history, last_chunk

    def _notices_of(self) -> Notices:
        if self._notices is None:
            self._notices = Notices(self.store.pool)
        return self._notices

    def _ask_for_more(self, stream_id: str, worker: str) -> None:
        """Ask `worker` to publish the stream as it goes, and to announce it (once this
        worker hears its channel, so that nothing is missed)."""
        inbox = keys.worker_inbox(worker)
        ask = ("RPUSH", inbox, f"+{stream_id}")
        self.store.send("resume", ask, ("PEXPIRE", inbox, 60_000), urgent=True)

    async def _hurry(self, stream_id: str, user: str, worker: str) -> None:
        """Ask for what the stream's worker has not published yet; back when it has come,
        or after HURRY_SECONDS."""
        notices, channel = self._notices_of(), keys.stream_news(user, stream_id)
        news = await notices.hear(channel)
        try:
            self._ask_for_more(stream_id, worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), HURRY_SECONDS)
        finally:
            notices.forget(channel, news)

    async def _following(
        self, stream_id: str, user: str, worker: str, last_chunk: bytes | None, last_seq: int
    ) -> AsyncIterator[Event]:
        """The events of a stream running on `worker`, after `last_seq`, as they come: read
        when its channel announces more, and looked at whole every CHECK_SECONDS."""
        log_key, meta_key, readers = keys.stream(user, stream_id)
        alive_key = keys.worker_alive(worker)
        channel = keys.stream_news(user, stream_id)
        notices = self._notices_of()
        news = await notices.hear(channel)
        if worker:
            self._ask_for_more(stream_id, worker)
        loop = asyncio.get_running_loop()
        checked = -CHECK_SECONDS
        try:
            while True:
                news.clear()  # from here on, news is of what this read may not see
                start = f"({last_chunk.decode()}" if last_chunk else "-"
                execute = self.store.execute
                reading = execute("resume", "XRANGE", log_key, start, "+", fallback=None)
                checking = loop.time() - checked >= CHECK_SECONDS
                if checking:
                    checked = loop.time()
                    self.store.send("resume", ("SET", readers, 1, "PX", LEASE_MS), urgent=True)
                    chunks, state, alive = await asyncio.gather(
                        reading,
                        execute("resume", "HGET", meta_key, "state", fallback=b"running"),
                        execute("resume", "EXISTS", alive_key, fallback=1),
                    )
                else:
                    chunks, state, alive = await reading, b"running", 1
                for chunk_id, fields in chunks or ():
                    last_chunk = chunk_id
                    start_seq, taken = _taken(chunk_id, fields)
                    for name, wire in taken[max(0, last_seq + 1 - start_seq) :]:
                        last_seq += 1
                        yield Event(name, {}, wire)  # as it came: the same bytes, the same id
                        if name in events.TERMINAL:
                            return
                if not chunks and (state == b"ended" or not alive):
                    # Ended without a last event we can see, or its worker died mid-way.
                    yield INTERRUPTED
                    return
                if not chunks and not checking:
                    checked = -CHECK_SECONDS  # news, yet nothing to read: the end? Look now
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news.wait(), checked + CHECK_SECONDS - loop.time())
        finally:
            notices.forget(channel, news)
            self.store.send("resume", ("DEL", readers))

    async def aclose(self) -> None:
        """Stop the chores, and let the last publishes land before the Store closes: a
        generation's end (its `shutdown` event) may still wait behind an earlier one."""
        if self._chores is not None:
            self._chores.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._chores
        for generation in list(self._unpublished):
            self._not_due(generation)
            self._publish(generation)
        if self._notices is not None:
            await self._notices.aclose()
        while self._in_flight:
            done, _ = await asyncio.wait(self._in_flight.values(), timeout=self.store.give_up)
            if not done:
                return  # Redis gives no answer: the Store's close ends them


async def _interrupted() -> AsyncIterator[Event]:
    yield INTERRUPTED


def _taken(
    chunk_id: bytes, fields: list[bytes] | dict[bytes, bytes]
) -> tuple[int, list[tuple[str, bytes]]]:
    """One log entry: the number of its first event, and each event's name and bytes."""
    if isinstance(fields, dict):
        values = fields
    else:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
    wires = values.get(b"w", b"")
    sizes = values.get(b"s")
    if sizes is not None:
        parts, at = [], 0
        for size in map(int, sizes.split()):
            parts.append(wires[at : at + size])
            at += size
    else:  # written by a worker of an earlier release: one block an event
        parts = events.blocks(wires)
    named = values.get(b"n")
    names = named.decode().split(" ") if named else [events.name_of(p) for p in parts]
    return int(chunk_id.split(b"-")[0]), list(zip(names, parts, strict=True))
