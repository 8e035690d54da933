"""With Redis, a generation is not bound to the worker that runs it.

- Its events go to a Redis stream, `chat:u:{<user hash>}:s:<id>:log` (under its user's
  hash tag, so in a Cluster it lives on the node that holds the user's limits), in one
  entry per turn of the event loop (the wire bytes of the events appended in that turn,
  the entry's id the number of the first), through the Store's batches: never a round
  trip per event. Its owner, worker and
  state are in `...:s:<id>:meta`. Both live while it runs and CHAT_RESUME_WINDOW after
  it ends, and the log is trimmed to CHAT_RESUME_MAX_BYTES as the generation's own is.
- A resume on any worker or pod of a stream running elsewhere follows that log: a `Mirror`
  is a local generation filled from it, read like any other, polling every POLL_SECONDS.
  While it has readers it keeps `...:s:<id>:readers` alive, so that the worker running
  the generation does not stop it for want of readers.
- A stop reaches the worker running the generation through that worker's inbox,
  `chat:w:{<worker>}:stop`, which every worker with generations polls every POLL_SECONDS.
- Each such worker keeps `chat:w:{<worker>}:alive`; a mirror whose generation's worker has
  died (SIGKILL) ends its readers' streams with `error {"code": "interrupted"}`.

Every key of one stream shares one Cluster hash slot (the `{<id>}` tag).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

from .events import Event, encode
from .generation import Generation
from .observability.logging import get_logger
from .store import Store, user_prefix

log = get_logger("service.relay")

POLL_SECONDS = 0.1
INBOX_SECONDS = 0.25
ALIVE_SECONDS = 6  # a worker's heartbeat lives this long, renewed every third of it
LEASE_MS = 3000  # a mirror's claim that someone reads the stream
RUNNING_TTL = 120  # seconds the keys of a running generation live, renewed while it runs
INTERRUPTED = Event(
    "error", {"code": "interrupted", "message": "the server generating this reply stopped"}
)


def _keys(stream_id: str, user: str) -> tuple[str, str, str]:
    """A stream's keys, under its user's hash tag: in a Cluster, the node that holds the
    user's limits holds the stream too, so a request's commands go to fewer nodes."""
    base = f"{user_prefix(user)}:s:{stream_id}"
    return f"{base}:log", f"{base}:meta", f"{base}:readers"


class Relay:
    def __init__(self, store: Store, window: float, max_bytes: int) -> None:
        self.store = store
        self.window_ms = max(1, int(window * 1000))
        self.max_bytes = max_bytes
        self.worker = secrets.token_hex(8)
        self._running: dict[str, Generation] = {}  # tracked here while they run
        self._dirty: set[Generation] = set()
        self._in_flight: dict[Generation, asyncio.Future[None]] = {}  # sent, unanswered
        self._behind: set[Generation] = set()  # appended to meanwhile: publish when it is
        self._flush_scheduled = False
        self._chores: asyncio.Task[None] | None = None

    # --- publishing this worker's generations -------------------------------------------

    def track(self, generation: Generation) -> None:
        generation.on_append = self._appended
        self._running[generation.id] = generation
        if self._chores is None or self._chores.done():
            self._chores = asyncio.ensure_future(self._keep_up())

    def _appended(self, generation: Generation) -> None:
        self._dirty.add(generation)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

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
        entries = generation.since(generation.published)
        log_key, meta_key, _ = _keys(generation.id, generation.user)
        commands: list[tuple[Any, ...]] = []
        if generation.published == 0:
            meta = ("user", generation.user, "worker", self.worker, "state", "running")
            commands.append(("HSET", meta_key, *meta))
        if entries:
            wires = b"".join([entry.wire for entry in entries])
            first, last = entries[0].seq, entries[-1].seq
            commands.append(("XADD", log_key, f"{first}-1", "w", wires, "l", last))
            generation.published = last
            if generation.base:  # the generation dropped its oldest: so does the log
                commands.append(("XTRIM", log_key, "MINID", f"{generation.base + 1}-0"))
        ttl = self.window_ms if generation.ended else RUNNING_TTL * 1000
        if generation.ended:
            commands.append(("HSET", meta_key, "state", "ended"))
        commands += [("PEXPIRE", log_key, ttl), ("PEXPIRE", meta_key, ttl)]
        sent = self.store.send("resume", *commands)
        if sent is not None:  # None: Redis is down, and nothing is on its way
            self._in_flight[generation] = sent
            sent.add_done_callback(lambda _: self._published(generation))

    def _published(self, generation: Generation) -> None:
        del self._in_flight[generation]
        if generation in self._behind:
            self._behind.discard(generation)
            self._publish(generation)

    def ended(self, generation: Generation) -> None:
        """Its last events and its end go out now; its keys live a window more. (The
        inbox poll stops by itself within INBOX_SECONDS when no generation is left;
        stopping it at once cost a new poller, and a round trip, per stream.)"""
        self._dirty.discard(generation)
        self._publish(generation)
        self._running.pop(generation.id, None)

    async def _keep_up(self) -> None:
        """While this worker runs generations: take stops from its inbox, keep its
        heartbeat, and keep its generations' keys alive."""
        inbox, alive = f"chat:w:{self.worker}:stop", f"chat:w:{self.worker}:alive"
        beats = 0
        while self._running:
            if beats % int(ALIVE_SECONDS / 3 / INBOX_SECONDS) == 0:
                self.store.send("resume", ("SET", alive, 1, "EX", ALIVE_SECONDS), urgent=True)
            if beats % int(RUNNING_TTL / 3 / INBOX_SECONDS) == 0 and beats:
                for generation in list(self._running.values()):
                    # Its keys' lives renewed in turn with its publishes: a renewal must
                    # not land after its end has shortened them to the window.
                    self._publish(generation)
            beats += 1
            stops: Any = await self.store.execute("resume", "LPOP", inbox, 64, fallback=None)
            for raw in stops or ():
                stopped = self._running.get(raw.decode(errors="replace"))
                if stopped is not None:
                    stopped.stop("cancelled")
            await asyncio.sleep(INBOX_SECONDS)

    async def read_elsewhere(self, generation: Generation) -> bool:
        """Whether a mirror somewhere reads this generation now."""
        _, _, readers = _keys(generation.id, generation.user)
        found = await self.store.execute("resume", "EXISTS", readers, fallback=0)
        return bool(found)

    # --- reaching generations that run elsewhere ----------------------------------------

    async def _meta(self, stream_id: str, user: str) -> dict[bytes, bytes] | None:
        _, meta_key, _ = _keys(stream_id, user)
        raw: Any = await self.store.execute("resume", "HGETALL", meta_key, fallback=None)
        if not raw:
            return None
        # A map under RESP3 (redis-py's default now), a flat list under RESP2.
        meta = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
        return meta if meta.get(b"user") == user.encode() else None

    async def stop(self, stream_id: str, user: str) -> bool:
        """Ask the worker running `user`'s stream to stop it; False if there is none."""
        meta = await self._meta(stream_id, user)
        if meta is None:
            return False
        if meta.get(b"state") == b"running":
            inbox = f"chat:w:{meta[b'worker'].decode()}:stop"
            await self.store.execute("resume", "RPUSH", inbox, stream_id, fallback=None)
            await self.store.execute("resume", "PEXPIRE", inbox, 60_000, fallback=None)
        return True

    async def mirror(self, stream_id: str, user: str, after: int) -> Mirror | None:
        """A local generation following `user`'s stream from Redis, able to serve from
        after entry `after`; None when it cannot (the same 404 in every case)."""
        meta = await self._meta(stream_id, user)
        if meta is None:
            return None
        log_key, _, _ = _keys(stream_id, user)
        chunks: Any = await self.store.execute("resume", "XRANGE", log_key, "-", "+", fallback=None)
        mirror = Mirror(self, stream_id, user, meta.get(b"worker", b"").decode(), self.max_bytes)
        for chunk_id, fields in chunks or ():
            mirror.take(chunk_id, fields)
        if not mirror.retains(after):
            return None
        mirror.state = meta.get(b"state", b"running")
        return mirror

    async def poll(self, mirror: Mirror) -> tuple[list[Any], bytes | None, bool]:
        """New log entries after the mirror's last, the state, and whether the worker
        running it is alive; while it reads, the readers' lease is renewed."""
        log_key, meta_key, readers = _keys(mirror.id, mirror.user)
        start = f"({mirror.last_chunk.decode()}" if mirror.last_chunk else "-"
        self.store.send("resume", ("SET", readers, 1, "PX", LEASE_MS), urgent=True)
        chunks, state, alive = await asyncio.gather(
            self.store.execute("resume", "XRANGE", log_key, start, "+", fallback=None),
            self.store.execute("resume", "HGET", meta_key, "state", fallback=b"running"),
            self.store.execute("resume", "EXISTS", f"chat:w:{mirror.worker}:alive", fallback=1),
        )
        return list(chunks or ()), state, bool(alive)

    def release_lease(self, mirror: Mirror) -> None:
        self.store.send("resume", ("DEL", _keys(mirror.id, mirror.user)[2]))

    async def aclose(self) -> None:
        """Stop the chores, and let the last publishes land before the Store closes: a
        generation's end (its `shutdown` event) may still wait behind an earlier one."""
        if self._chores is not None:
            self._chores.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._chores
        while self._in_flight:
            done, _ = await asyncio.wait(self._in_flight.values(), timeout=self.store.give_up)
            if not done:
                return  # Redis gives no answer: the Store's close ends them


async def _nothing() -> AsyncIterator[Event]:
    return
    yield  # an async generator that yields nothing


class _NoFinisher:
    """A mirror only follows: the generation's own worker counts, keeps and settles."""

    async def before_done(self, generation: Generation, done: Event) -> Event:
        return done

    def ending(self, generation: Generation) -> None:
        return None

    async def after_end(self, generation: Generation) -> None:
        return None


class Mirror(Generation):
    """A generation that runs on another worker or pod, as this worker's readers see it:
    its log filled from Redis, the same bytes with the same ids."""

    __slots__ = ("last_chunk", "relay", "state", "worker")

    def __init__(self, relay: Relay, stream_id: str, user: str, worker: str, max_bytes: int):
        super().__init__(stream_id, user, _nothing(), _NoFinisher(), max_bytes)
        self.relay = relay
        self.worker = worker
        self.last_chunk: bytes | None = None
        self.state: bytes | None = b"running"

    def take(self, chunk_id: bytes, fields: list[bytes]) -> None:
        """Add the events of one log entry that this mirror does not have yet."""
        self.last_chunk = chunk_id
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        first = int(chunk_id.split(b"-")[0])
        if not self.entries and self.base == 0:
            self.base = first - 1  # the log starts where the generation's retained part does
        for offset, block in enumerate(values.get(b"w", b"").split(b"\n\n")[:-1]):
            seq = first + offset
            if seq <= self.last_seq:
                continue
            wire = block + b"\n\n"
            name = wire[wire.index(b"\nevent: ") + 8 : wire.index(b"\ndata: ")].decode()
            self._add(seq, name, wire)
            if name == "content" and self.first_content_at is None:
                self.first_content_at = 0.0

    async def _run(self) -> None:
        outcome = "done"
        try:
            while not self._terminal():
                if self.held_back is not None:
                    await self.held_back
                chunks, state, alive = await self.relay.poll(self)
                for chunk_id, fields in chunks:
                    self.take(chunk_id, fields)
                if self._terminal():
                    break
                if not chunks and (state == b"ended" or not alive):
                    # Ended without a last event we can see, or its worker died mid-way.
                    self._add(self.last_seq + 1, "error", self._interrupted())
                    break
                await asyncio.sleep(POLL_SECONDS)
            last = self.entries[-1].name if self.entries else "done"
            outcome = "done" if last == "done" else "error"
        except asyncio.CancelledError:
            outcome = self._stop_reason or "shutdown"
            if outcome == "shutdown":
                await self._end_stopped(outcome)
            if self._stop_reason is None:
                raise
        finally:
            self.outcome = outcome
            self._wake()
            self.relay.release_lease(self)
            if self.on_ended is not None:
                self.on_ended(self)

    def _terminal(self) -> bool:
        return bool(self.entries) and self.entries[-1].name in ("done", "error")

    def _interrupted(self) -> bytes:
        return encode(INTERRUPTED, self.wire_id(self.last_seq + 1))
